"""Live retraining inside `fraudkit detect`: the feature log, the retraining process,
champion/challenger outcomes and the control-topic announcements every detector swaps on.

`RetrainExtension` plugs into the scoring loop through `DetectExtension` hooks. On the loop's
thread it only does cheap work: buffer scored rows and arriving labels for the feature log
(`fraudkit.retrain.feature_log`) and poll the control topic without waiting. One background
thread per detector writes the feature log's files, loads announced models
(`ModelHolder.offer`, swapped between batches) and, on the trainer, counts new labels and
supervises the retraining process (`fraudkit.retrain.worker`, which joins labels to logged rows
in Spark): scoring never pauses.

Roles (`retrain.role`): every detector logs its scored rows and the labels into the shared
feature log and swaps on announcements. `scorer` never retrains. `all` and `trainer` retrain when they hold the trainer
lock (an exclusive `flock` on `buffer_path/trainer.lock`), so exactly one detector sharing the
buffer retrains; another takes over if it stops. See docs/retraining.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.config import FraudkitConfig
from fraudkit.detect import DetectContext, DetectExtension
from fraudkit.retrain.feature_log import FeatureLog
from fraudkit.schema import SCHEMA_VERSION, InvalidMessage, decode_control, encode
from fraudkit.textsafe import printable

if TYPE_CHECKING:
    from fraudkit.detect import ModelHolder
    from fraudkit.features import FeatureSpec
    from fraudkit.schema import Label, Transaction
    from fraudkit.stream.kafka import Consumer, Producer

OutcomeCallback = Callable[[dict[str, Any]], None]

CONTROL_KEY = "model"
MODEL_PUBLISHED = "model_published"
MODEL_REJECTED = "model_rejected"
RETRAIN_FAILED = "retrain_failed"
# Killed because its detector stopped: no outcome, so neither a failure nor announced to others.
RETRAIN_CANCELLED = "retrain_cancelled"
# Outcomes announced on the control topic; a cancelled run (stopped with the detector) is not.
EVENT_TYPES = {"published": MODEL_PUBLISHED, "rejected": MODEL_REJECTED, "failed": RETRAIN_FAILED}
OUTCOME_EVENT_TYPES = {**EVENT_TYPES, "cancelled": RETRAIN_CANCELLED}
LOCK_FILE = "trainer.lock"
# How often the trainer counts the labels written to the feature log.
SCAN_EVERY_S = 1.0
CONTROL_MESSAGES_PER_POLL = 100
STOP_WAIT_S = 60.0
LOG_TAIL_CHARS = 1500
MAX_EVENTS = 100


def control_message(
    event_type: str,
    *,
    trainer: str,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    champion_metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A control-topic announcement (docs/architecture.md), with extra fields after the standard ones."""
    from fraudkit.model.registry import jsonable

    message: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "type": event_type,
        "version": version,
        "metrics": dict(metrics or {}),
        "champion_metrics": dict(champion_metrics or {}),
        "at_ms": time.time_ns() // 1_000_000,
        "trainer": trainer,
    }
    message.update(extra)
    return dict(jsonable(message))


def announce(producer: Producer, config: FraudkitConfig, message: dict[str, Any]) -> None:
    """Produce an announcement on topics.control (key "model") and wait for it to be delivered."""
    from fraudkit.stream import kafka

    kafka.produce(producer, config.topics.control, encode(message), key=CONTROL_KEY)
    kafka.flush(producer, max(10.0, config.kafka.connect_timeout_s))


def outcome_summary(event: dict[str, Any]) -> str:
    """One line for logs and the status panel."""
    kind = event.get("type")
    metric = str(event.get("metric") or "average_precision")
    challenger = (event.get("metrics") or {}).get(metric)
    champion = (event.get("champion_metrics") or {}).get(metric)
    champion_version = event.get("champion_version") or "champion"
    rows = (event.get("rows") or {}).get("holdout")
    if kind == RETRAIN_FAILED:
        return f"retraining failed ({event.get('error')}); {champion_version} keeps serving"
    if kind == RETRAIN_CANCELLED:
        return f"retraining {event.get('reason') or 'cancelled'}; nothing was published"
    figures = ""
    if isinstance(challenger, int | float) and isinstance(champion, int | float):
        figures = f": {metric} {challenger:.4f} vs {champion_version} {champion:.4f}"
        if rows:
            figures += f" on {rows:,} held-out rows"
    if kind == MODEL_PUBLISHED:
        return f"{event.get('version')} published{figures}"
    return f"{event.get('version') or 'challenger'} rejected{figures}; {champion_version} keeps serving"


VERSION_NAME = re.compile(r"^v[1-9][0-9]{0,8}$")
# Longest text kept from an announcement's fields (a message may hold megabytes).
MAX_FIELD_CHARS = 500
_TEXT_FIELDS = ("type", "version", "trainer", "metric", "champion_version", "error", "reason")
_NUMBER_FIELDS = ("at_ms", "seconds", "requested_ms", "holdout_rows", "min_improvement")


def _number_map(value: Any) -> dict[str, float | int]:
    if not isinstance(value, dict):
        return {}
    return {
        str(key)[:MAX_FIELD_CHARS]: item
        for key, item in list(value.items())[:50]
        if isinstance(item, int | float) and not isinstance(item, bool)
    }


def clean_announcement(event: Any) -> dict[str, Any]:
    """A control-topic message with only well-typed, bounded fields (others dropped), safe to summarise."""
    if not isinstance(event, dict):
        return {}
    cleaned: dict[str, Any] = {}
    for key in _TEXT_FIELDS:
        if isinstance(event.get(key), str):
            cleaned[key] = event[key][:MAX_FIELD_CHARS]
    for key in _NUMBER_FIELDS:
        value = event.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            cleaned[key] = value
    for key in ("metrics", "champion_metrics", "rows"):
        if key in event:
            cleaned[key] = _number_map(event[key])
    if "schema" in event:
        cleaned["schema"] = event["schema"]
    return cleaned


class TrainerLock:
    """An exclusive, non-blocking flock: held by the one detector that retrains (released on exit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    @property
    def held(self) -> bool:
        """Whether this detector holds it."""
        return self._handle is not None

    def try_acquire(self, holder: str) -> bool:
        """Take the lock if free; records the holder's name in the file for people looking."""
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{holder}\n")
        handle.flush()
        self._handle = handle
        return True

    def holder(self) -> str:
        """Who holds (or last held) the lock, as written in the file."""
        try:
            return self.path.read_text().strip() or "another detector"
        except OSError:
            return "another detector"

    def release(self) -> None:
        """Let another detector become the trainer."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class RetrainPolicy:
    """When a retraining is due: every `every_labels` new labelled rows, and/or every `every_seconds` with new ones."""

    def __init__(self, every_labels: int, every_seconds: float | None, now: float) -> None:
        self.every_labels = every_labels
        self.every_seconds = every_seconds
        self.labels_since = 0
        self.last_start = now

    def observe(self, labels: int) -> None:
        """Count new labelled rows since the last start."""
        self.labels_since += labels

    def due(self, now: float) -> bool:
        """Whether to start one now."""
        if self.labels_since >= self.every_labels:
            return True
        return (
            self.every_seconds is not None
            and self.labels_since > 0
            and now - self.last_start >= self.every_seconds
        )

    def started(self, now: float) -> None:
        """A retraining started (or was skipped): count afresh."""
        self.labels_since = 0
        self.last_start = now


class DriftTrigger:
    """When sustained drift asks for a retraining: an alarm older than `after_s`, at most once per `cooldown_s`."""

    def __init__(self, after_s: float | None, cooldown_s: float) -> None:
        self.after_s = after_s
        self.cooldown_s = cooldown_s
        self.last_start: float | None = None
        self.started_count = 0

    def due(self, now: float, drifting_since: float | None) -> bool:
        """Whether the alarm that began at `drifting_since` (None: no alarm) calls for a retraining now."""
        if self.after_s is None or drifting_since is None or now - drifting_since < self.after_s:
            return False
        return self.last_start is None or now - self.last_start >= self.cooldown_s

    def started(self, now: float) -> None:
        """A drift-triggered retraining started."""
        self.last_start = now
        self.started_count += 1


@dataclass
class RetrainStats:
    """Figures of one detector's retraining side, for status, summaries and tests."""

    jobs: int = 0
    published: int = 0
    rejected: int = 0
    failed: int = 0
    cancelled: int = 0
    swaps_announced: int = 0
    drift_triggered: int = 0
    buffer_rows: int = 0
    buffer_files_written: int = 0
    write_errors: int = 0
    last: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the last outcome included)."""
        return {
            "jobs": self.jobs,
            "published": self.published,
            "rejected": self.rejected,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "swaps_announced": self.swaps_announced,
            "drift_triggered": self.drift_triggered,
            "buffer_rows": self.buffer_rows,
            "buffer_files_written": self.buffer_files_written,
            "write_errors": self.write_errors,
            "last": self.last,
        }


class RetrainJob:
    """One retraining process: started, polled without blocking, killed on stop or timeout."""

    def __init__(
        self, directory: Path, process: subprocess.Popen[bytes], timeout_s: float, job: dict[str, Any]
    ) -> None:
        self.directory = directory
        self.process = process
        self.started = time.monotonic()
        self.timeout_s = timeout_s
        self.job = job
        # Why the process runs elsewhere than retrain.worker_cpus asks, if it does.
        self.warning: str | None = None

    @classmethod
    def launch(
        cls,
        config: FraudkitConfig,
        spec_dict: dict[str, Any],
        champion_version: str,
        trainer: str,
        command: Sequence[str] | None = None,
    ) -> RetrainJob:
        """Write the job file and start `python -m fraudkit.retrain.worker JOB_DIR` in its own process group."""
        from fraudkit.retrain.worker import JOB_FILE, LOG_FILE, confine_to_cpus, lower_priority

        # Private (0700): the job file holds the whole config, Kafka credentials included.
        directory = Path(tempfile.mkdtemp(prefix="fraudkit-retrain-"))
        job = {
            "config": config.model_dump(mode="json"),
            "spec": spec_dict,
            "champion_version": champion_version,
            "trainer": trainer,
            "requested_ms": time.time_ns() // 1_000_000,
        }
        (directory / JOB_FILE).write_text(json.dumps(job))
        argv = list(command or [sys.executable, "-m", "fraudkit.retrain.worker"])
        with open(directory / LOG_FILE, "wb") as log:
            process = subprocess.Popen(
                [*argv, str(directory)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        lower_priority(process.pid)
        started = cls(directory, process, config.retrain.job_timeout_s, job)
        started.warning = confine_to_cpus(config.retrain.worker_cpus, process.pid)
        return started

    @property
    def seconds(self) -> float:
        """Time since the start."""
        return time.monotonic() - self.started

    def poll(self) -> dict[str, Any] | None:
        """The job's result once it has ended (a failure result if it crashed or timed out), else None."""
        from fraudkit.retrain.worker import RESULT_FILE

        code = self.process.poll()
        if code is None:
            if self.seconds < self.timeout_s:
                return None
            self.kill()
            return self._finish({"outcome": "failed", "error": f"timed out after {self.timeout_s:g}s"})
        try:
            result = json.loads((self.directory / RESULT_FILE).read_text())
        except (OSError, ValueError):
            result = {
                "outcome": "failed",
                "error": f"the retraining process exited with code {code} without a result: {self.log_tail()}",
            }
        return self._finish(result)

    def log_tail(self) -> str:
        """The end of the process's output, on one line."""
        from fraudkit.retrain.worker import LOG_FILE

        try:
            text = (self.directory / LOG_FILE).read_text(errors="replace")
        except OSError:
            return "(no log)"
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return " | ".join(lines)[-LOG_TAIL_CHARS:] or "(empty log)"

    def cancel(self) -> dict[str, Any]:
        """Kill a job whose detector is stopping: its result, marked cancelled (the job folder goes)."""
        self.kill()
        return self._finish(
            {"outcome": "cancelled", "reason": f"cancelled at stop after {self.seconds:.0f}s"}
        )

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        result.setdefault("seconds", self.seconds)
        shutil.rmtree(self.directory, ignore_errors=True)
        return result

    def kill(self) -> None:
        """Stop the process and its children (the Spark JVM) at once."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


_STOP = object()


class RetrainExtension(DetectExtension):
    """Feature log, control-topic swaps, and (for the trainer) retraining with champion/challenger."""

    def __init__(
        self,
        config: FraudkitConfig,
        *,
        on_outcome: OutcomeCallback | None = None,
        worker_command: Sequence[str] | None = None,
    ) -> None:
        self.config = config
        self.settings = config.retrain
        self.role = self.settings.role
        self.on_outcome = on_outcome
        self.worker_command = worker_command
        self.stats = RetrainStats()
        self._tasks: queue.Queue[Any] = queue.Queue()
        self._job: RetrainJob | None = None
        self._labels_logged = 0  # labels written since the trainer last counted (writer thread only)
        self._next_scan = 0.0
        self._offered: set[str] = set()
        self._lock_warned = False
        self._thread: threading.Thread | None = None
        self._control: Consumer | None = None
        self._producer: Producer | None = None
        self.lock: TrainerLock | None = None
        self.policy: RetrainPolicy | None = None
        self.drift_trigger = DriftTrigger(config.drift.retrain_after_s, config.drift.retrain_cooldown_s)

    # -- hooks (the loop's thread) --------------------------------------------------------------

    def on_start(self, context: DetectContext) -> None:
        """Open the feature log, the control reader and (trainer side) the lock, then start the background thread."""
        from fraudkit.stream import kafka

        self.context = context
        self.holder: ModelHolder = context.holder
        self.instance_id = context.instance_id
        self.log = context.log
        self._use_spec(self.holder.spec)
        rows = self.feature_log.files("rows")
        labels = self.feature_log.files("labels")
        self.stats.buffer_rows = sum(item.rows for item in labels)
        self.log(
            f"feature log {self.feature_log.url}: {sum(item.rows for item in rows):,} scored rows in "
            f"{len(rows)} file(s), {self.stats.buffer_rows:,} labels in {len(labels)} file(s)"
        )
        kafka.ensure_topics(self.config, [self.config.topics.control])
        self._control = self._open_control_reader()
        if self.role != "scorer":
            self._producer = kafka.make_producer(
                self.config, **{"client.id": f"fraudkit-retrain-{self.instance_id}"}
            )
            self.lock = TrainerLock(Path(self.settings.buffer_path) / LOCK_FILE)
            self.policy = RetrainPolicy(
                self.settings.every_labels, self.settings.every_seconds, time.monotonic()
            )
            if self.lock.try_acquire(self.instance_id):
                self.log(f"retraining: this detector is the trainer (role {self.role})")
            else:
                self._lock_taken()
        self._thread = threading.Thread(target=self._work, name="fraudkit-retrain", daemon=True)
        self._thread.start()

    def on_batch_scored(
        self,
        features: np.ndarray,
        transactions: Sequence[Transaction],
        scores: np.ndarray,
        model_version: str,
    ) -> None:
        """Log what the model saw (buffered; the writer thread writes it to the feature log)."""
        if self.holder.spec is not self._spec:
            self._flush()
            self._use_spec(self.holder.spec)
        self.feature_log.add_rows(transactions, features, scores, model_version, time.time_ns() // 1_000_000)

    def on_labels(self, labels: Sequence[Label]) -> None:
        """Log labels as they arrive; the retraining joins them to logged rows, whoever scored them."""
        self.feature_log.add_labels(labels)

    def between_batches(self) -> None:
        """Hand buffered rows and labels to the writer and read announcements; never waits."""
        if self.feature_log.due():
            self._flush()
        self._poll_control()

    def on_stop(self) -> None:
        """Write what is joined, stop the background thread (killing a running retraining), close clients."""
        self._flush()
        thread = self._thread
        if thread is not None:
            self._tasks.put(_STOP)
            thread.join(STOP_WAIT_S)
        from fraudkit.stream import kafka

        close_timeout_s = self.config.kafka.close_timeout_s
        if self._control is not None:
            kafka.close_within(self._control, close_timeout_s, "control-topic reader", self.log)
        if self._producer is not None:
            kafka.close_producer(self._producer, min(5.0, close_timeout_s), "announcement producer", self.log)
        if self.lock is not None:
            self.lock.release()

    # -- loop-side helpers --------------------------------------------------------------------

    def _use_spec(self, spec: FeatureSpec) -> None:
        self._spec = spec
        self._spec_dict = spec.to_dict()
        settings = self.settings
        self.feature_log = FeatureLog(
            settings.feature_log_url,
            self._spec_dict,
            self.instance_id,
            settings.feature_log_flush_batches,
            settings.feature_log_flush_s,
            settings.feature_log_horizon_days,
        )

    def _flush(self) -> None:
        rows, labels = self.feature_log.take()
        if rows is not None or labels is not None:
            self._tasks.put(("write", self.feature_log, rows, labels))

    def _lock_taken(self) -> None:
        if self._lock_warned or self.lock is None:
            return
        self._lock_warned = True
        message = (
            f"retraining: {self.lock.holder()} holds {self.lock.path}; this detector only scores and swaps "
            "until it is released"
        )
        self.log(("warning: " if self.role == "trainer" else "") + message)

    def _open_control_reader(self) -> Consumer:
        from fraudkit.stream import kafka

        # From the end: announcements made before this start are already in the registry's `current`.
        return kafka.read_whole_topic(
            self.config, self.config.topics.control, f"fraudkit-control-{self.instance_id}", kafka.OFFSET_END
        )

    def _poll_control(self) -> None:
        if self._control is None:
            return
        for message in self._control.consume(CONTROL_MESSAGES_PER_POLL, 0):
            if message.error() is not None:
                continue
            try:
                event = decode_control(message.value())
            except InvalidMessage as exc:
                self.log(f"control topic: ignoring a malformed announcement ({exc})")
                continue
            self.on_announcement(event)

    def on_announcement(self, event: dict[str, Any]) -> None:
        """React to one control-topic message: load a published model; count others' outcomes.

        The control topic is written by whoever may write it (docs/security.md): fields are
        checked for type, a version is only queued when it names one (vN), and loading it asks
        the registry whether it is publishable (`Registry.load_publishable`).
        """
        event = clean_announcement(event)
        own = event.get("trainer") == self.instance_id
        version = event.get("version")
        if event.get("type") == MODEL_PUBLISHED and version is not None:
            if not VERSION_NAME.match(version):
                self.log(
                    f"control topic: ignoring an announcement of '{printable(version, 80)}' "
                    f"by {printable(event.get('trainer'), 80)}: not a model version (vN)"
                )
                return
            if version != self.holder.model.version and version not in self._offered:
                self._offered.add(version)
                self._tasks.put(("load", version, event.get("trainer")))
                self.stats.swaps_announced += 1
        if not own and event.get("type") in EVENT_TYPES.values():
            self._record(event)

    # -- the background thread ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=0.2 if self._job is not None else 1.0)
            except queue.Empty:
                task = None
            if task is _STOP:
                break
            if task is not None:
                try:
                    self._run_task(task)
                except Exception as exc:  # the detector keeps scoring whatever happens here
                    self.log(f"retraining: {task[0]} failed: {type(exc).__name__}: {exc}")
                    if task[0] == "write":
                        self.stats.write_errors += 1
            try:
                if self._job is not None:
                    self._check_job()
                if self.policy is not None:
                    self._tick()
            except Exception as exc:
                self.log(f"retraining: {type(exc).__name__}: {exc}; the current model keeps serving")
        job, self._job = self._job, None
        if job is not None:
            # A job that ended since the last check has its real outcome; one still running is cancelled.
            try:
                self._conclude(job, job.poll() or job.cancel())
            except Exception as exc:
                job.kill()
                self.log(f"retraining: {type(exc).__name__}: {exc} while stopping; nothing was announced")

    def _run_task(self, task: tuple[Any, ...]) -> None:
        kind = task[0]
        if kind == "write":
            feature_log, rows, labels = task[1], task[2], task[3]
            self.stats.buffer_files_written += feature_log.write(rows, labels)
            if labels is not None:
                self._labels_logged += labels.num_rows
                self.stats.buffer_rows += labels.num_rows
        elif kind == "load":
            self._load_and_offer(task[1], task[2])

    def _tick(self) -> None:
        """Count new labels in the feature log (every detector's files); start a job when due."""
        assert self.policy is not None and self.lock is not None
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + SCAN_EVERY_S
        # Every detector reads and logs every label: the trainer counts those it logged itself
        # (counted on this thread, after they were written, so a job started now finds them).
        new_labels, self._labels_logged = self._labels_logged, 0
        self.policy.observe(new_labels)
        if self._job is not None:
            return
        drifting_since = self.holder.drifting_since
        # Drift alone cannot teach a model anything: it needs labels in the feature log to train on.
        drifted = self.stats.buffer_rows > 0 and self.drift_trigger.due(now, drifting_since)
        if not drifted and not self.policy.due(now):
            return
        new_rows = self.policy.labels_since
        self.policy.started(now)
        if not self.lock.try_acquire(self.instance_id):
            self._lock_taken()
            return
        if drifted and drifting_since is not None:
            self.drift_trigger.started(now)
            self.stats.drift_triggered += 1
            columns = ", ".join(self.holder.drifting[:3]) or "a column"
            reason = f"{columns} drifted for {now - drifting_since:.0f}s (drift.retrain_after_s)"
        else:
            reason = f"{new_rows:,} new labels"
        champion = self.holder.model.version
        self._job = RetrainJob.launch(
            self.config, self._spec_dict, champion, self.instance_id, self.worker_command
        )
        self.stats.jobs += 1
        self.log(
            f"retraining started after {reason}: {self.stats.buffer_rows:,} labels in the feature log, "
            f"champion {champion} (process {self._job.process.pid})"
        )
        if self._job.warning:
            self.log(f"retrain.worker_cpus: {self._job.warning}; the retraining runs on the detector's CPUs")

    def _load_and_offer(self, version: str, trainer: Any) -> None:
        from fraudkit.errors import ModelError
        from fraudkit.features import FeatureSpec
        from fraudkit.model.registry import Registry

        who = printable(trainer, 80)
        try:
            model = Registry(self.config.registry.path).load_publishable(version)
            stored = model.manifest.get("feature_spec")
            spec = FeatureSpec.from_dict(stored) if stored else self.holder.spec
            self.holder.offer(model, spec)
        except ModelError as exc:
            self._offered.discard(version)
            self.log(
                f"refusing model {version} announced by {who}: {printable(exc)}; "
                f"{printable(self.holder.model.version)} keeps serving"
            )
            return
        self.log(f"model {version} (announced by {who}) loaded: it serves from the next batch")

    def _check_job(self) -> None:
        job = self._job
        assert job is not None
        result = job.poll()
        if result is None:
            return
        self._job = None
        self._conclude(job, result)

    def _conclude(self, job: RetrainJob, result: dict[str, Any]) -> None:
        outcome = str(result.get("outcome", "failed"))
        event_type = OUTCOME_EVENT_TYPES.get(outcome, RETRAIN_FAILED)
        version = result.get("version")
        extra = {
            key: result[key]
            for key in ("metric", "min_improvement", "rows", "reason", "error", "timings", "buffer")
            if key in result
        }
        event = control_message(
            event_type,
            trainer=self.instance_id,
            version=version if isinstance(version, str) else None,
            metrics=result.get("metrics"),
            champion_metrics=result.get("champion_metrics"),
            champion_version=result.get("champion_version", job.job["champion_version"]),
            holdout_rows=(result.get("rows") or {}).get("holdout"),
            seconds=round(float(result.get("seconds", job.seconds)), 3),
            requested_ms=job.job["requested_ms"],
            **extra,
        )
        if event_type == MODEL_PUBLISHED and isinstance(version, str):
            # The trainer swaps without waiting for its own announcement to come back.
            self._offered.add(version)
            self._load_and_offer(version, self.instance_id)
        if self._producer is not None and event_type != RETRAIN_CANCELLED:
            try:
                announce(self._producer, self.config, event)
            except Exception as exc:
                self.log(
                    f"retraining: could not announce {event_type} on {self.config.topics.control}: {exc}"
                )
        self._record(event)

    def _record(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == MODEL_PUBLISHED:
            self.stats.published += 1
        elif kind == MODEL_REJECTED:
            self.stats.rejected += 1
        elif kind == RETRAIN_CANCELLED:
            self.stats.cancelled += 1
        else:
            self.stats.failed += 1
        event = {**event, "summary": outcome_summary(event)}
        self.stats.last = event
        self.stats.events = [*self.stats.events[-(MAX_EVENTS - 1) :], event]
        self.holder.record_retrain(event)
        self.log(f"retraining: {printable(event['summary'])}")
        if self.on_outcome is not None:
            self.on_outcome(event)


def retrain_extensions(
    config: FraudkitConfig, on_outcome: OutcomeCallback | None = None
) -> list[DetectExtension]:
    """The extensions `fraudkit detect` runs for `retrain.*` (none when retraining is disabled)."""
    if not config.retrain.enabled:
        return []
    return [RetrainExtension(config, on_outcome=on_outcome)]
