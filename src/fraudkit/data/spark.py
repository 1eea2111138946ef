"""The Spark session used for preprocessing: local by default, or the configured cluster master."""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING

from fraudkit.config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(config: SparkConfig | None = None, app_name: str = "fraudkit") -> SparkSession:
    """Get or create the process-wide Spark session from config (imports pyspark lazily)."""
    config = config or SparkConfig()
    # Spark's Python workers must run the same interpreter as the driver (the virtualenv's).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # pyspark 4.x warns about pandas 3 on every conversion; fraudkit's conversions go through Arrow
    # and are covered by tests (feature parity, training), so the warning is noise for users.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName(app_name)
        .master(config.master)
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
    )
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
