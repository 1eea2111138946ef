"""The Spark session used for preprocessing: local by default, or the configured cluster master.

The JVM's own output (its start-up warnings, log4j lines, Python worker errors) goes to a log file
(`spark.log_file`), never to the terminal: fraudkit's commands print their own progress lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fraudkit.config import SparkConfig
from fraudkit.errors import FraudkitError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# log4j2 for the driver JVM: WARN and above, to the JVM's stderr, which is the log file.
LOG4J2_PROPERTIES = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = %d{yyyy-MM-dd HH:mm:ss} %p %c{1}: %m%n
logger.parquet.name = org.apache.parquet
logger.parquet.level = error
"""
LOG_TAIL_LINES = 5


def spark_log_path(config: SparkConfig) -> Path:
    """Where the Spark JVM writes its output (`spark.log_file`, else one file in the temp directory)."""
    if config.log_file:
        # Absolute: the log4j configuration beside it is handed to the JVM as a file URI.
        return Path(config.log_file).resolve()
    return Path(tempfile.gettempdir()) / f"fraudkit-spark-{os.getuid()}.log"


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at `path` while the JVM is launched: the child keeps it, we get ours back."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _log_tail(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-LOG_TAIL_LINES:])


def spark_session(config: SparkConfig | None = None, app_name: str = "fraudkit") -> SparkSession:
    """Get or create the process-wide Spark session from config (imports pyspark lazily)."""
    config = config or SparkConfig()
    log_path = spark_log_path(config)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log4j = log_path.with_name(log_path.stem + "-log4j2.properties")
    log4j.write_text(LOG4J2_PROPERTIES)
    if config.master.startswith("local"):
        # A local master needs no routable address; without this Spark warns that the host name
        # resolves to a loopback address and goes looking for another interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Spark's Python workers must run the same interpreter as the driver (the virtualenv's).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # pyspark 4.x warns about pandas 3 on every conversion; fraudkit's conversions go through Arrow
    # and are covered by tests (feature parity, training), so the warning is noise for users.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    java_options = f"-Duser.timezone=UTC -Dlog4j2.configurationFile={log4j.as_uri()}"
    builder = (
        SparkSession.builder.appName(app_name)
        .master(config.master)
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.executor.extraJavaOptions", java_options)
    )
    for key, value in config.conf.items():
        if key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
            value = f"{java_options} {value}"
        builder = builder.config(key, value)
    launches_jvm = SparkContext._gateway is None
    try:
        with _stderr_to(log_path) if launches_jvm else contextlib.nullcontext():
            session = builder.getOrCreate()
    except Exception as exc:  # the JVM's reason is in its log, not in the Python exception
        raise FraudkitError(
            f"Spark did not start: {type(exc).__name__}: {exc}; {log_path} ends: {_log_tail(log_path)}"
        ) from exc
    session.sparkContext.setLogLevel("WARN")
    return session
