"""A "production month": restarts, kill -9 and group changes against one uninterrupted detector.

Run: .venv/bin/python benchmarks/bench_production_month.py [--customers 600] [--days 45] [--seconds 150]

One fresh local Apache Kafka. The simulator makes --history-days of history (the first model is
trained on them, in process: `train.fit`, the code of `fraudkit train`) and then --days of stream.
A producer replays the stream in event-time order over about --seconds of wall time, and every
transaction's label at the real 7-day event-time delay (produced when the stream reaches
event time + 7 days - 12 hours; the features use a label only once event time has passed its
transaction's + 7 days, so the 12 hours only keep the race between the two topics out of the
comparison). Meanwhile:

* a **reference** detector (its own group and verdicts topic, durable state off) scores the whole
  stream without interruption;
* the **fleet** (durable state on, `--role scorer`: logging rows and labels to the feature log)
  goes 1 detector → kill -9 + restart → 3 detectors → kill -9 + restart of one → 2 detectors (one
  stopped cleanly) → kill -9 + restart of one, at 20/35/50/65/80% of the stream.

Printed: average precision and recall over the run and per event-day, fleet vs reference; the share
of fleet verdicts whose score differs from the reference's (transactions with one fleet verdict;
those with more are the duplicated batches of at-least-once replays, counted apart); every
restore of every fleet process, killed ones included (read from the `restored N cards of
partitions [...] from ... in X s` lines each detector logs on stderr), with the figures of the
`--json` summary of those that stopped cleanly; then one retraining over the fleet's feature log
(the worker the trainer runs: Spark join of labels to logged rows, train.fit, champion/challenger)
and how many of its labels arrived after the last restart for rows logged before it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from _detector_log import DetectorLog
from _engines import local_broker
from bench_detect import SimulatorFields

from fraudkit.config import FraudkitConfig, SimulateConfig, load_config
from fraudkit.data.simulate import simulate_dataset
from fraudkit.features import FeatureSpec, frame_to_transactions
from fraudkit.features.frames import pandas_features
from fraudkit.model.metrics import average_precision, precision_recall_f1
from fraudkit.model.registry import Registry
from fraudkit.model.train import fit
from fraudkit.schema import Label, encode
from fraudkit.stream import kafka

DAY_MS = 86_400_000
LABEL_DELAY_MS = 7 * DAY_MS
LABEL_LEAD_MS = 12 * 3_600_000
PHASES = (0.20, 0.35, 0.50, 0.65, 0.80)
# What fraudkit.state.store logs for each restore (cards of the partitions assigned, and its time).
RESTORED_CARDS = re.compile(r"restored ([\d,]+) cards of partitions \[([^\]]*)\] from \S+ in ([\d.]+)s")
RESTORED_LABELS = re.compile(r"restored ([\d,]+) terminal labels from")


def make_config(bootstrap: str, workdir: Path, suffix: str) -> FraudkitConfig:
    values: dict[str, Any] = {
        "kafka.common.bootstrap.servers": bootstrap,
        "topics.transactions": f"month-tx-{suffix}",
        "topics.legit": f"month-tx-{suffix}.legit",
        "topics.fraud": f"month-tx-{suffix}.fraud",
        "topics.verdicts": f"month-verdicts-{suffix}",
        "topics.labels": f"month-labels-{suffix}",
        "topics.dead_letter": f"month-tx-{suffix}.dead-letter",
        "topics.control": f"month-control-{suffix}",
        "topics.retention_ms": 7 * DAY_MS,
        "detect.group_id": f"month-fleet-{suffix}",
        "detect.transactional_id": f"month-{suffix}",
        "detect.batch_size": 500,
        "registry.path": str(workdir / "models"),
        "retrain.role": "scorer",
        "retrain.buffer_path": str(workdir / "lock"),
        "retrain.feature_log_url": str(workdir / "feature-log"),
        "retrain.feature_log_flush_s": 5.0,
        "retrain.epochs": 5,
        "retrain.window_rows": 1_000_000,
        "retrain.max_flagged_share": 0.2,
        "state.snapshot_url": str(workdir / "state"),
        "state.snapshot_interval_s": 20.0,
        "train.epochs": 8,
        "train.hidden_sizes": [32, 16],
    }
    return load_config(None, values, environ={})


def reference_of(config: FraudkitConfig, workdir: Path) -> FraudkitConfig:
    data = config.model_dump(mode="json")
    data["detect"]["group_id"] += "-reference"
    data["topics"]["verdicts"] += ".reference"
    data["topics"]["legit"] += ".reference"
    data["topics"]["fraud"] += ".reference"
    data["state"]["enabled"] = False
    data["retrain"]["enabled"] = False
    return FraudkitConfig.model_validate(data)


def train_first_model(config: FraudkitConfig, history: Any) -> tuple[str, FeatureSpec]:
    spec = FeatureSpec.from_config(config.features, SimulatorFields())
    features = pandas_features(history, spec, np.float32)
    table = history[["transaction_id", "event_time_ms", "card_id", "label"]].copy()
    for index, name in enumerate(spec.names):
        table[name] = features[:, index]
    table = table.sort_values(["event_time_ms", "transaction_id"], kind="mergesort").reset_index(drop=True)
    cut = table["event_time_ms"].quantile(0.8)
    train_mask = (table["event_time_ms"] < cut).to_numpy()
    result = fit(table, spec.names, config.train, train_mask, ~train_mask)
    version = Registry(config.registry.path).publish(
        result.model_state,
        feature_names=spec.names,
        hidden_sizes=config.train.hidden_sizes,
        normalisation=result.normalisation,
        threshold=result.threshold,
        metrics=result.metrics,
        feature_spec=spec.to_dict(),
        trainer="bench_production_month",
    )
    return version, spec


class Producer(threading.Thread):
    """Replays transactions and their delayed labels in event-time order at a steady pace."""

    def __init__(self, config: FraudkitConfig, stream: Any, seconds: float) -> None:
        super().__init__(daemon=True)
        self.config = config
        self.transactions = frame_to_transactions(stream)
        self.labels = dict(zip(stream["transaction_id"], stream["label"].astype(int), strict=True))
        self.seconds = seconds
        self.produced = 0
        self.label_sent_ms: dict[str, int] = {}

    def run(self) -> None:
        producer = kafka.make_producer(self.config)
        topics = self.config.topics
        pending: list[Any] = []  # transactions whose label is not out yet, in event order
        cursor = 0
        per_s = len(self.transactions) / self.seconds
        started = time.monotonic()
        for index, tx in enumerate(self.transactions):
            now_event = tx.event_time_ms
            while (
                cursor < len(pending)
                and pending[cursor].event_time_ms + LABEL_DELAY_MS - LABEL_LEAD_MS <= now_event
            ):
                self._label(producer, pending[cursor])
                cursor += 1
            if cursor > 10_000:
                del pending[:cursor]
                cursor = 0
            kafka.produce(producer, topics.transactions, encode(tx), key=tx.card_id)
            pending.append(tx)
            self.produced = index + 1
            if index % 200 == 0:
                producer.poll(0)
                ahead = started + index / per_s - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        # The stream's end: the labels still to come arrive "a week later", all at once.
        for tx in pending[cursor:]:
            self._label(producer, tx)
        kafka.flush(producer, 120)

    def _label(self, producer: Any, tx: Any) -> None:
        label = Label(
            transaction_id=tx.transaction_id,
            event_time_ms=tx.event_time_ms,
            label=int(self.labels[tx.transaction_id]),
            card_id=tx.card_id,
            terminal_id=tx.terminal_id,
            labelled_ms=tx.event_time_ms + LABEL_DELAY_MS,
        )
        kafka.produce(producer, self.config.topics.labels, encode(label), key=tx.card_id)
        self.label_sent_ms[tx.transaction_id] = int(time.time() * 1000)


def detector(config_path: Path, instance_id: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fraudkit",
            "detect",
            "--quiet",
            "--json",
            "--instance-id",
            instance_id,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FRAUDKIT_CONFIG": str(config_path)},
        text=True,
    )


def restores_in(lines: list[str]) -> list[tuple[int, str, float]]:
    """(cards, partitions, seconds) of every restore a detector logged."""
    found = []
    for line in lines:
        match = RESTORED_CARDS.search(line)
        if match:
            found.append((int(match[1].replace(",", "")), match[2], float(match[3])))
    return found


def terminal_labels_in(lines: list[str]) -> int | None:
    """Terminal labels the detector restored from the snapshot (None: it logged no snapshot restore)."""
    for line in lines:
        match = RESTORED_LABELS.search(line)
        if match:
            return int(match[1].replace(",", ""))
    return None


def read_verdicts(config: FraudkitConfig, topic: str, quiet_s: float = 3.0) -> list[dict[str, Any]]:
    reader = kafka.make_reader(config)
    partitions = kafka.list_topics(config)[topic]
    reader.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in range(partitions)])
    verdicts: list[dict[str, Any]] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            for message in reader.consume(10_000, 0.2):
                if message.error() is None:
                    verdicts.append(orjson.loads(message.value()))
                    last = time.monotonic()
    finally:
        reader.close()
    return verdicts


def figures(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    if labels.sum() == 0 or labels.sum() == labels.size:
        return float("nan"), float("nan")
    return average_precision(labels, scores), precision_recall_f1(labels, scores, threshold).recall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--days", type=int, default=45)
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=150.0)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fraudkit-month-") as work, local_broker("kafka") as handle:
        workdir = Path(work)
        config = make_config(handle.bootstrap_servers, workdir, uuid.uuid4().hex[:8])
        reference = reference_of(config, workdir)
        world = simulate_dataset(
            SimulateConfig(
                customers=args.customers,
                terminals=2 * args.customers,
                days=args.history_days + args.days,
                seed=11,
            )
        ).sort_values(["event_time_ms", "transaction_id"], kind="mergesort")
        split_ms = int(world["event_time_ms"].min()) + args.history_days * DAY_MS
        history, stream = world[world["event_time_ms"] < split_ms], world[world["event_time_ms"] >= split_ms]
        version, spec = train_first_model(config, history)
        champion = Registry(config.registry.path).load(version)
        print(
            f"world: {args.customers:,} customers; history {len(history):,} transactions "
            f"({int(history['label'].sum())} frauds) trained {version}; stream {len(stream):,} transactions over "
            f"{args.days} event days ({int(stream['label'].sum())} frauds), replayed in ~{args.seconds:.0f}s",
            flush=True,
        )
        kafka.ensure_topics(config)
        kafka.ensure_topics(
            reference, [reference.topics.verdicts, reference.topics.legit, reference.topics.fraud]
        )
        fleet_path = workdir / "fleet.json"
        fleet_path.write_text(json.dumps(config.model_dump(mode="json")))
        reference_path = workdir / "reference.json"
        reference_path.write_text(json.dumps(reference.model_dump(mode="json")))

        processes: dict[str, subprocess.Popen[str]] = {}
        logs: dict[str, DetectorLog] = {}  # each process's stderr, read as it comes (killed ones too)
        killed: list[str] = []
        summaries: dict[str, dict[str, Any]] = {}
        events: list[str] = []
        kill_ms: list[int] = []

        def start(name: str, path: Path = fleet_path, *extra: str) -> None:
            processes[name] = detector(path, name, *extra)
            logs[name] = DetectorLog(processes[name])
            events.append(f"{time.monotonic() - started:6.1f}s start {name}")

        def kill(name: str) -> None:
            processes[name].send_signal(signal.SIGKILL)
            processes[name].wait(30)
            killed.append(name)
            kill_ms.append(int(time.time() * 1000))
            events.append(f"{time.monotonic() - started:6.1f}s kill -9 {name}")

        def stop(name: str) -> None:
            process = processes[name]
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
            assert process.stdout is not None
            out = process.stdout.read()  # the --json summary, printed once at the end
            if process.returncode != 0:
                err = "\n".join(logs[name].finished())
                raise SystemExit(f"{name} failed ({process.returncode}): {err[-2000:]}")
            summaries[name] = json.loads(out)
            events.append(f"{time.monotonic() - started:6.1f}s stop {name}")

        start("reference", reference_path, "--no-retrain")
        start("a")
        time.sleep(8)  # both join before the stream starts
        producer = Producer(config, stream, args.seconds)
        producer.start()
        total = len(producer.transactions)
        plan = [
            lambda: (kill("a"), start("a-restarted")),
            lambda: (start("b"), start("c")),
            lambda: (kill("b"), start("b-restarted")),
            lambda: stop("c"),
            lambda: (kill("a-restarted"), start("a-restarted-again")),
        ]
        for share, action in zip(PHASES, plan, strict=True):
            while producer.produced < share * total:
                time.sleep(0.2)
            action()
        producer.join()
        events.append(f"{time.monotonic() - started:6.1f}s stream produced")
        # Wait until both sides have a verdict for every transaction, then stop everyone cleanly.
        deadline = time.monotonic() + 300
        wanted = set(stream["transaction_id"])
        while time.monotonic() < deadline:
            fleet_ids = {v["transaction_id"] for v in read_verdicts(config, config.topics.verdicts, 1.0)}
            reference_ids = {
                v["transaction_id"] for v in read_verdicts(reference, reference.topics.verdicts, 1.0)
            }
            if wanted <= fleet_ids and wanted <= reference_ids:
                break
            time.sleep(2)
        time.sleep(10)  # the last labels reach the feature log (flushed every 5 s, and at stop)
        for name in [n for n, p in processes.items() if p.poll() is None]:
            stop(name)
        print("timeline:\n  " + "\n  ".join(events), flush=True)

        fleet = read_verdicts(config, config.topics.verdicts)
        ref = {v["transaction_id"]: v for v in read_verdicts(reference, reference.topics.verdicts)}
        counts = Counter(v["transaction_id"] for v in fleet)
        first: dict[str, dict[str, Any]] = {}
        for verdict in fleet:
            first.setdefault(verdict["transaction_id"], verdict)
        ids = stream["transaction_id"].tolist()
        missing = [t for t in ids if t not in first or t not in ref]
        single = [t for t in ids if counts[t] == 1 and t in ref]
        duplicated = [t for t in ids if counts[t] > 1]
        differing = [t for t in single if abs(first[t]["score"] - ref[t]["score"]) > 1e-6]
        print(
            f"verdicts: {len(fleet):,} from the fleet for {len(first):,} transactions ({len(missing)} missing); "
            f"{len(duplicated):,} transactions scored twice (replayed batches after kill -9)"
        )
        print(
            f"scores differing from the uninterrupted detector (> 1e-6), outside the duplicated batches: "
            f"{len(differing):,} of {len(single):,} = {100 * len(differing) / max(len(single), 1):.3f}% (goal < 0.1%)"
        )
        if differing:
            by_detector = Counter(first[t]["detector"] for t in differing)
            day_of = {
                t: int((first[t]["event_time_ms"] - stream["event_time_ms"].min()) // DAY_MS)
                for t in differing
            }
            print(
                f"  differing by fleet detector: {dict(by_detector)}; event days {sorted(Counter(day_of.values()).items())}; "
                f"largest difference {max(abs(first[t]['score'] - ref[t]['score']) for t in differing):.2e}"
            )
        dup_diff = sum(1 for t in duplicated if t in ref and abs(first[t]["score"] - ref[t]["score"]) > 1e-6)
        print(f"  (first verdicts of duplicated transactions differing: {dup_diff} of {len(duplicated)})")

        labels = stream["label"].astype(int).to_numpy()
        times = stream["event_time_ms"].to_numpy()
        fleet_scores = np.array([first[t]["score"] if t in first else 0.0 for t in ids])
        ref_scores = np.array([ref[t]["score"] if t in ref else 0.0 for t in ids])
        threshold = champion.threshold
        fleet_ap, fleet_recall = figures(labels, fleet_scores, threshold)
        ref_ap, ref_recall = figures(labels, ref_scores, threshold)
        print(
            f"over the run: AP fleet {fleet_ap:.4f} vs uninterrupted {ref_ap:.4f} "
            f"({100 * (fleet_ap - ref_ap) / ref_ap:+.2f}%, goal within 1%); recall at {threshold:.3f}: "
            f"{fleet_recall:.3f} vs {ref_recall:.3f}"
        )
        print("per event day: day  frauds  AP fleet  AP reference  recall fleet  recall reference")
        days = (times - times.min()) // DAY_MS
        for day in range(int(days.max()) + 1):
            mask = days == day
            fa, fr = figures(labels[mask], fleet_scores[mask], threshold)
            ra, rr = figures(labels[mask], ref_scores[mask], threshold)
            print(f"  {day:3d} {int(labels[mask].sum()):6d}   {fa:8.4f}  {ra:12.4f}  {fr:12.3f}  {rr:16.3f}")

        print("restores per fleet process (from its log; its --json summary where it stopped cleanly):")
        restarts: list[str] = []
        for name, detector_log in logs.items():
            if name == "reference":
                continue
            lines = detector_log.finished()
            restores = restores_in(lines)
            cards = sum(c for c, _, _ in restores)
            seconds = sum(s for _, _, s in restores)
            from_snapshot = terminal_labels_in(lines)
            each = "; ".join(f"[{p}] {c:,} cards in {s:.2f}s" for c, p, s in restores) or "none logged"
            if name in killed:
                end = "killed with -9"
            elif name in summaries:
                end = "stopped"
            else:  # it ended before the script stopped it: say how
                errors = [text for text in lines if text.startswith("error:")] or lines[-1:]
                end = f"exited by itself with code {processes[name].returncode} ({' '.join(errors)[-300:]})"
            line = (
                f"  {name:18s} {end}: {len(restores)} restores, "
                f"{cards:,} cards in {seconds:.2f}s ({each}); terminal labels from the snapshot: "
                f"{'none' if from_snapshot is None else f'{from_snapshot:,}'}"
            )
            state = (summaries.get(name) or {}).get("state") or {}
            if state:
                line += (
                    f"; summary: {state['restored_cards']:,} cards in {state['restore_s']:.2f}s, "
                    f"{state['replayed_rows']:,} replayed rows kept out of the windows, consumed "
                    f"{summaries[name]['consumed']:,}"
                )
            print(line)
            if "restarted" in name:
                restarts.append(f"{name} {seconds:.2f}s ({cards:,} cards)")
        print(f"  restore time of each restarted process ({len(restarts)}): " + ", ".join(restarts))

        # Retraining from the fleet's feature log, with labels that arrived after the restarts.
        from fraudkit.retrain.feature_log import FeatureLog
        from fraudkit.retrain.worker import run_job

        log = FeatureLog(config.retrain.feature_log_url, spec.to_dict(), "bench")
        last_kill = kill_ms[-1]
        rows_before = {f.path for f in log.files("rows") if f.created_ms < last_kill}
        import pandas as pd

        early_ids = set(
            pd.concat([pd.read_parquet(p, columns=["transaction_id"]) for p in rows_before])["transaction_id"]
        )
        late_labels = sum(
            1 for t, sent in producer.label_sent_ms.items() if sent > last_kill and t in early_ids
        )
        print(
            f"feature log: {sum(f.rows for f in log.files('rows')):,} logged rows, "
            f"{sum(f.rows for f in log.files('labels')):,} logged labels; {late_labels:,} labels arrived after the "
            f"last kill -9 for rows logged before it (by detectors since killed or restarted)"
        )
        job = {
            "config": config.model_dump(mode="json"),
            "spec": spec.to_dict(),
            "champion_version": version,
            "trainer": "bench",
            "requested_ms": int(time.time() * 1000),
        }
        result = run_job(job, log=lambda line: print(f"  retrain: {line}", flush=True))
        print(
            f"retraining: {result['outcome']} {result['version']} over a window of {result['rows']}; "
            f"{result['metric']} challenger {result['metrics'].get(result['metric'])} vs champion "
            f"{result['champion_metrics'].get(result['metric'])}; current model now "
            f"{Registry(config.registry.path).current_version()}"
        )
    print(f"total {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
