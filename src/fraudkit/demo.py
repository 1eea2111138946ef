"""`fraudkit demo`: simulate, split, train, then generate and detect side by side with live retraining."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudkit import errors
from fraudkit.config import FraudkitConfig
from fraudkit.errors import BrokerError, FraudkitError, IncompleteRun

if TYPE_CHECKING:
    import pandas

    from fraudkit.detect import DetectSummary
    from fraudkit.detect.status import DetectStatus
    from fraudkit.generate import GenerateSummary

# The demo world: big enough for a model to learn card/terminal behaviour, small enough to train
# in about a minute on two cores.
DEMO_CUSTOMERS = 2000
DEMO_TERMINALS = 4000
DEMO_DAYS = 45
# As configs/local.yaml: the demo's topics outlive it by an hour (labels: a day).
DEMO_RETENTION_MS = 3_600_000
DEMO_LABELS_RETENTION_MS = 86_400_000
HISTORY_FRACTION = 0.8
RECENT_FRAUDS = 8
# The detector "fell behind" when its backlog held more than this many seconds of traffic at once.
BEHIND_S = 5.0
REPLAY_CHUNK_ROWS = 2_000
# The detector process must own its partition within this long (start-up, group join).
DETECTOR_READY_S = 120.0
StageCallback = Callable[[str], None]


@dataclass
class DemoState:
    """What the dashboard shows; written by the worker threads, read by the renderer."""

    stage: str = "starting"
    stages: list[tuple[str, float]] = field(default_factory=list)
    client: GenerateSummary | None = None
    detector: DetectStatus | None = None
    recent_frauds: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_FRAUDS))
    retrain_events: list[dict[str, Any]] = field(default_factory=list)
    bootstrap: str = ""
    broker_engine: str = ""
    broker_started: bool = False
    first_model: str = ""
    errors: list[str] = field(default_factory=list)
    streaming_started: float | None = None  # time.monotonic() when the generator started
    max_lag: int = 0  # the detector's largest backlog (transactions) seen in its status reports
    max_lag_at_s: float | None = None  # seconds into streaming when it was seen


@dataclass
class DemoSummary:
    """The closing figures of a demo run.

    `sent`, `verdicts` and `missing` (sent without a verdict by the end) come first: precision,
    recall and latency only describe the transactions that were answered. `problems` says in plain
    words what went wrong (empty when every transaction got its verdict and the detector kept up).
    """

    sent: int
    verdicts: int
    missing: int
    max_lag: int
    rate: float
    problems: list[str]
    transactions: int
    frauds_sent: int
    caught: int
    missed: int
    false_alarms: int
    precision: float | None
    recall: float | None
    latency_ms: dict[str, float | None]
    models_trained: int
    retrains: list[dict[str, Any]]
    model_versions: list[str]
    detector_throughput_per_s: float
    bootstrap: str
    broker_engine: str
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json."""
        return dict(self.__dict__)

    @property
    def kept_up(self) -> bool:
        """Every transaction answered and the detector never fell behind."""
        return not self.problems

    def raise_if_incomplete(self) -> None:
        """IncompleteRun (exit code 7) naming what went wrong, after the summary has been shown."""
        if self.problems:
            raise IncompleteRun("the demo did not keep up: " + "; ".join(self.problems))


def demo_problems(sent: int, verdicts: int, max_lag: int, rate: float, lag_at_s: float | None) -> list[str]:
    """What the closing summary must say first, in plain words (empty when the demo kept up)."""
    problems = []
    missing = sent - verdicts
    if sent and missing > 0:
        problems.append(
            f"{missing:,} of {sent:,} transactions ({missing / sent:.1%}) got no verdict before the end"
        )
    if rate > 0 and max_lag > rate * BEHIND_S:
        when = f" {lag_at_s:,.0f}s into streaming" if lag_at_s is not None else ""
        problems.append(
            f"the detector fell behind: {max_lag:,} transactions waited unread{when} "
            f"(about {max_lag / rate:,.0f}s of traffic; the demo allows {BEHIND_S:g}s)"
        )
    return problems


@contextlib.contextmanager
def _broker(config: FraudkitConfig, state: DemoState, stage: StageCallback) -> Iterator[FraudkitConfig]:
    """Use the configured Kafka if it answers, else start a local broker (broker.engine) for the demo."""
    from fraudkit.stream.broker import (
        cache_dir_of,
        engine_version,
        free_port,
        port_in_use,
        resolve_engine,
        running_broker,
    )
    from fraudkit.stream.kafka import wait_for_broker

    with contextlib.suppress(BrokerError):
        wait_for_broker(config, timeout_s=1.5)
        state.bootstrap = config.kafka.bootstrap_servers
        state.broker_engine = "the configured Kafka"
        # Someone else's broker may hold earlier runs: fresh topic names keep this run's numbers clean.
        yield _fresh_topics(config)
        return
    port = config.broker.port if not port_in_use(config.broker.port) else free_port()
    cache_dir = cache_dir_of(config)
    engine = resolve_engine(config.broker.engine, cache_dir)
    state.broker_engine = engine_version(engine)
    stage(f"starting a local {state.broker_engine} broker on 127.0.0.1:{port}")
    with running_broker(port, config.broker.start_timeout_s, engine, cache_dir=cache_dir) as bootstrap:
        state.bootstrap = bootstrap
        state.broker_started = True
        common = {**config.kafka.common, "bootstrap.servers": bootstrap}
        yield config.model_copy(update={"kafka": config.kafka.model_copy(update={"common": common})})


def _fresh_topics(config: FraudkitConfig) -> FraudkitConfig:
    suffix = uuid.uuid4().hex[:6]
    names = {
        name: f"demo-{suffix}.{getattr(config.topics, name)}"
        for name in ("transactions", "legit", "fraud", "verdicts", "labels", "dead_letter", "control")
    }
    return config.model_copy(update={"topics": config.topics.model_copy(update=names)})


def demo_config(config: FraudkitConfig, workdir: Path, seed: int, rate: float) -> FraudkitConfig:
    """The demo's settings: everything under workdir, a small world, labels and retraining sized to show."""
    from fraudkit.config import load_config

    data = config.model_dump(mode="json")
    data["simulate"].update(
        customers=DEMO_CUSTOMERS,
        terminals=DEMO_TERMINALS,
        days=DEMO_DAYS,
        seed=seed,
        out=str(workdir / "transactions.parquet"),
    )
    data["data"].update(
        dataset="fraudkit",
        path=str(workdir / "transactions.parquet"),
        history_path=str(workdir / "history.parquet"),
        stream_path=str(workdir / "stream.parquet"),
    )
    data["registry"]["path"] = str(workdir / "models")
    # The Spark JVMs (first training, each live retraining) write their own output here.
    data["spark"]["log_file"] = str(workdir / "spark.log")
    # One detector gains nothing from more partitions, and on Tansu every fetch costs partitions x
    # history (docs/scaling.md). A demo lasts minutes: its fresh topics need the local profile's
    # retention, not a production week on a shared broker.
    data["topics"].update(
        transactions_partitions=1,
        partitions=1,
        retention_ms=min(config.topics.retention_ms, DEMO_RETENTION_MS),
        labels_retention_ms=min(config.topics.labels_retention_ms, DEMO_LABELS_RETENTION_MS),
    )
    data["train"].update(epochs=min(config.train.epochs, 8), valid_days=7.0)
    # The client waits for the detector to answer everything it sent before the summary.
    data["generate"].update(
        rate=rate,
        seed=seed,
        read_verdicts=True,
        speedup=None,
        count=None,
        duration_s=None,
        verdict_wait_s=60.0,
    )
    data["retrain"].update(
        enabled=True,
        role="all",
        buffer_path=str(workdir / "labels"),
        # the first retraining about 30 s after labels start to flow, so that its outcome shows
        # within the run (the retraining process runs niced, on one core: the scorer keeps up)
        every_labels=min(config.retrain.every_labels * 5, int(rate * 30)),
        # at full speed, so that it ends within the run: at the demo's rate the machine has room
        # (client p99 18-20 ms with it, measured); a fifth of a CPU (the default) takes ~5x as long
        worker_cpu_share=1.0,
    )
    overrides = {f"{section}": value for section, value in data.items()}
    return load_config(None, _flatten(overrides), environ={})


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in (
            "kafka.common",
            "kafka.producer",
            "kafka.consumer",
            "spark.conf",
        ):
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def prepare(config: FraudkitConfig, stage: StageCallback) -> tuple[str, int]:
    """Simulate, split and train the first model; returns (model version, last event time of the data)."""
    from fraudkit.data.simulate import simulate_to_file
    from fraudkit.data.spark import spark_session
    from fraudkit.data.split import split_dataset
    from fraudkit.model.train import train_from_dataset

    stage(f"simulating {config.simulate.customers:,} customers over {config.simulate.days} days")
    simulated = simulate_to_file(config.simulate)
    stage(f"simulated {simulated.rows:,} transactions; starting Spark")
    from pyspark.sql import SparkSession

    # Stop Spark afterwards only if this call started it (an embedding process may share it).
    owned = SparkSession.getActiveSession() is None
    spark = spark_session(config.spark, app_name="fraudkit-demo")
    try:
        stage("splitting by event time into history and stream (Spark)")
        split_dataset(
            spark,
            config,
            config.data.path,
            "fraudkit",
            train_fraction=HISTORY_FRACTION,
            history_out=config.data.history_path,
            stream_out=config.data.stream_path,
        )
        stage("training the first model on the history (Spark features, PyTorch MLP)")
        trained = train_from_dataset(config, config.data.history_path, "fraudkit", spark, stage=stage)
    finally:
        if owned:
            spark.stop()
    return trained.version, simulated.end_ms


def replay_then_simulate(config: FraudkitConfig, after_ms: int) -> Iterator[pandas.DataFrame]:
    """The held-out stream part first, then the same simulated world carrying on, day after day."""
    from fraudkit.data.datasets import load_frame, load_mapping
    from fraudkit.data.simulate import stream_transactions

    frame = load_frame(config.data.stream_path, load_mapping("fraudkit"))
    # Small pieces: each is converted in the generator's process while it reads verdicts, and a
    # big one would hold the interpreter long enough to show up in the measured latency.
    for start in range(0, len(frame), REPLAY_CHUNK_ROWS):
        yield frame.iloc[start : start + REPLAY_CHUNK_ROWS]
    day_ms = 86_400_000
    yield from stream_transactions(config.simulate, start_ms=(after_ms // day_ms + 1) * day_ms)


class _FraudVerdictReader(threading.Thread):
    """Keeps the latest fraud verdicts (with reasons) for the dashboard, reading from the topic end."""

    def __init__(self, config: FraudkitConfig, state: DemoState, stop: threading.Event) -> None:
        super().__init__(name="demo-verdicts", daemon=True)
        self.config = config
        self.state = state
        self.stop = stop

    def run(self) -> None:
        from fraudkit.schema import InvalidMessage, decode_json
        from fraudkit.stream.kafka import close_within, make_reader

        # A dashboard can wait: few, large fetches spare the broker.
        reader = make_reader(self.config, **{"fetch.wait.max.ms": 200, "fetch.min.bytes": 1_048_576})
        try:
            reader.subscribe([self.config.topics.verdicts])
            while not self.stop.is_set():
                for message in reader.consume(500, 0.2):
                    if message.error() is not None:
                        continue
                    try:
                        verdict = decode_json(message.value())
                    except InvalidMessage:
                        continue
                    if verdict.get("decision") == "fraud":
                        self.state.recent_frauds.appendleft(verdict)
        finally:
            close_within(reader, self.config.kafka.close_timeout_s, "dashboard reader")


def run_demo(
    config: FraudkitConfig,
    *,
    stop_event: threading.Event | None = None,
    on_update: Callable[[DemoState], None] | None = None,
    until: Callable[[DemoState], bool] | None = None,
    max_streaming_s: float | None = None,
) -> DemoSummary:
    """Run the whole pipeline on one machine (settings from config.demo) and return the closing figures.

    Streaming lasts demo.duration_s; with `until`, it goes on past that until `until(state)` holds
    (e.g. a live retraining has been announced), but never past `max_streaming_s`.
    """
    from fraudkit.generate import run_generate

    stop = stop_event or threading.Event()
    state = DemoState()
    started = time.monotonic()

    def stage(text: str) -> None:
        state.stage = text
        state.stages.append((text, time.monotonic() - started))
        if on_update is not None:
            on_update(state)

    duration_s, rate, seed = config.demo.duration_s, config.demo.rate, config.demo.seed
    workdir = Path(config.demo.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = workdir / time.strftime("run-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = demo_config(config, run_dir, seed, rate)
    with _broker(settings, state, stage) as settings:
        state.first_model, last_event_ms = prepare(settings, stage)
        if stop.is_set():
            raise FraudkitError("demo interrupted before streaming started")
        detector = _DetectorProcess(settings, state, on_update, run_dir / "detector.log")
        detector.start()
        # Transactions sent before the detector owns its partition would wait for its start-up
        # (torch, the model, the group join): seconds of latency that say nothing about scoring.
        # The dashboard's reader joins its group meanwhile, not while the first transactions flow.
        verdicts = _FraudVerdictReader(settings, state, detector.stopped)
        verdicts.start()
        stage("starting the detector (model, feature state, consumer group)")
        detector.wait_until_ready(DETECTOR_READY_S, stop)
        stage(f"streaming at {rate:,.0f} transactions/s for {duration_s:g}s with live retraining")
        state.streaming_started = time.monotonic()
        generator_stop = threading.Event()
        streaming_deadline = time.monotonic() + max(duration_s, max_streaming_s or duration_s)

        def end_streaming() -> None:
            # the set duration, then (with `until`) the awaited event, never past the deadline
            if generator_stop.wait(duration_s):
                return
            while until is not None and not until(state) and time.monotonic() < streaming_deadline:
                if generator_stop.wait(0.5):
                    return
            generator_stop.set()

        timer = threading.Thread(target=end_streaming, name="demo-duration", daemon=True)
        timer.start()

        def forward_stop() -> None:
            stop.wait()
            generator_stop.set()

        threading.Thread(target=forward_stop, name="demo-stop", daemon=True).start()

        def on_client_status(summary: GenerateSummary) -> None:
            state.client = summary
            if detector.failure is not None:
                generator_stop.set()

        try:
            state.client = run_generate(
                settings,
                stop_event=generator_stop,
                on_status=on_client_status,
                source=replay_then_simulate(settings, last_event_ms),
            )
        finally:
            generator_stop.set()
            detect_summary = detector.stop_and_wait()
            verdicts.join(5)
            stop.set()
    return _summary(state, detect_summary, time.monotonic() - started, rate)


class _DetectorProcess:
    """The demo's detector in a process of its own, so it never shares a GIL with the generator."""

    def __init__(
        self,
        config: FraudkitConfig,
        state: DemoState,
        on_update: Callable[[DemoState], None] | None,
        log_path: Path,
    ) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.state = state
        self.on_update = on_update
        self.events: Any = context.Queue()
        self.stop_event: Any = context.Event()
        self.stopped = threading.Event()
        self.summary: DetectSummary | None = None
        self.failure: FraudkitError | None = None
        self.process = context.Process(
            target=_detector_main,
            args=(config.model_dump_json(), self.events, self.stop_event, str(log_path)),
            name="fraudkit-demo-detect",
            daemon=True,
        )
        self.pump = threading.Thread(target=self._pump, name="demo-detect-events", daemon=True)

    def start(self) -> None:
        """Start the process and the thread that turns its reports into dashboard state."""
        self.process.start()
        self.pump.start()

    def wait_until_ready(self, timeout_s: float, stop: threading.Event) -> None:
        """Return once the detector reports an assigned partition; BrokerError if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stop.is_set():
            status = self.state.detector
            if status is not None and status.partitions:
                return
            if self.failure is not None:
                self.stopped.set()
                raise self.failure
            if not self.process.is_alive() and not self.pump.is_alive():
                self.stopped.set()
                raise self.failure or FraudkitError(f"the detector exited with code {self.process.exitcode}")
            time.sleep(0.1)
        if not stop.is_set():
            self.stop_and_wait()
            raise BrokerError(
                f"the detector owned no partition of the transactions topic after {timeout_s:g}s"
            )

    def _pump(self) -> None:
        import queue

        while True:
            try:
                kind, payload = self.events.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive():
                    if self.summary is None and self.failure is None:
                        self.failure = FraudkitError(f"the detector exited with code {self.process.exitcode}")
                    return
                continue
            if kind == "status":
                self.state.detector = payload
                lag = payload.lag or 0
                if lag > self.state.max_lag:
                    self.state.max_lag = lag
                    streaming = self.state.streaming_started
                    self.state.max_lag_at_s = time.monotonic() - streaming if streaming else None
                if self.on_update is not None:
                    self.on_update(self.state)
            elif kind == "retrain":
                self.state.retrain_events.append(payload)
            elif kind == "summary":
                self.summary = payload
                return
            elif kind == "error":
                class_name, message = payload
                error_class = getattr(errors, class_name, FraudkitError)
                self.failure = error_class(message)
                return

    def stop_and_wait(self, timeout_s: float = 60.0) -> DetectSummary | None:
        """Ask the detector to finish its batch, commit and stop; kill it if it does not."""
        self.stop_event.set()
        self.stopped.set()
        self.pump.join(timeout_s)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        if self.failure is not None:
            raise self.failure
        return self.summary


def _detector_main(config_json: str, events: Any, stop: Any, log_path: str) -> None:
    """Entry point of the demo's detector process: run_detect with live retraining, reporting via a queue.

    Its standard output and error go to log_path: a stray warning written to the terminal would
    break the dashboard drawn in place there (what matters reaches the parent through the queue).
    The detector's own log lines (a retraining's outcome, a failure's reason) go there too.
    """
    import os
    import signal
    import sys

    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)

    # Ctrl-C reaches the whole process group; the parent decides when the detector stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from fraudkit.detect import run_detect
    from fraudkit.retrain.extension import retrain_extensions
    from fraudkit.rules.live import rules_extensions
    from fraudkit.textsafe import printable

    def write_log(message: str) -> None:
        # One write per line: the loop and the retraining thread log concurrently.
        sys.stdout.write(f"{time.strftime('%H:%M:%S')} {printable(message)}\n")
        sys.stdout.flush()

    config = FraudkitConfig.model_validate_json(config_json)
    try:
        extensions = [
            *rules_extensions(config),
            *retrain_extensions(config, on_outcome=lambda event: events.put(("retrain", event))),
        ]
        summary = run_detect(
            config,
            stop_event=stop,
            on_status=lambda status: events.put(("status", status)),
            on_log=write_log,
            extensions=extensions,
        )
        events.put(("summary", summary))
    except FraudkitError as exc:
        events.put(("error", (type(exc).__name__, str(exc))))
    except BaseException as exc:
        events.put(("error", ("FraudkitError", f"the detector failed: {type(exc).__name__}: {exc}")))


def _summary(state: DemoState, detector: DetectSummary | None, elapsed_s: float, rate: float) -> DemoSummary:
    client = state.client
    confusion = client.confusion if client is not None else {}
    tp, fp, fn = confusion.get("tp", 0), confusion.get("fp", 0), confusion.get("fn", 0)
    promoted = [event for event in state.retrain_events if event.get("type") == "model_published"]
    # A retraining cancelled at the stop trained nothing.
    ran = [event for event in state.retrain_events if event.get("type") != "retrain_cancelled"]
    sent = client.sent if client is not None else 0
    verdicts = client.verdicts if client is not None else 0
    return DemoSummary(
        sent=sent,
        verdicts=verdicts,
        missing=sent - verdicts,
        max_lag=state.max_lag,
        rate=rate,
        problems=demo_problems(sent, verdicts, state.max_lag, rate, state.max_lag_at_s),
        transactions=sent,
        frauds_sent=client.frauds_sent if client is not None else 0,
        caught=tp,
        missed=fn,
        false_alarms=fp,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / (tp + fn) if tp + fn else None,
        latency_ms=dict(client.latency_ms) if client is not None else {},
        models_trained=1 + len(ran),
        retrains=list(state.retrain_events),
        model_versions=[state.first_model, *(event.get("version", "") for event in promoted)],
        detector_throughput_per_s=round(detector.throughput_per_s, 1) if detector else 0.0,
        bootstrap=state.bootstrap,
        broker_engine=state.broker_engine,
        duration_s=round(elapsed_s, 1),
    )
