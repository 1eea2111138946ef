"""Spark's JVM never writes to the terminal: its warnings and log4j lines go to spark.log_file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark]

NOISE = ("WARN", "log4j", "NativeCodeLoader", "resolves to a loopback address", "SPARK_LOCAL_IP")


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_spark_session_keeps_the_jvm_output_in_its_log_file(tmp_path: Path, relative: bool) -> None:
    # The demo passes a path relative to the working directory (its run directory under .fraudkit).
    log = tmp_path / "logs" / "spark.log"
    log_file = "logs/spark.log" if relative else str(log)
    script = (
        "from fraudkit.config import SparkConfig\n"
        "from fraudkit.data.spark import spark_session\n"
        f"spark = spark_session(SparkConfig(master='local[1]', log_file={log_file!r}))\n"
        "print('rows', spark.range(7).count())\n"
        "spark.stop()\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "SPARK_LOCAL_IP"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "rows 7"
    assert [word for word in NOISE if word in done.stderr + done.stdout] == [], done.stderr
    text = log.read_text()
    assert "NativeCodeLoader" in text or "incubator" in text  # what used to reach the terminal
    assert "resolves to a loopback address" not in text  # a local master binds to 127.0.0.1
