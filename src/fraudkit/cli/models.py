"""`fraudkit train`, `fraudkit evaluate` and `fraudkit models list|show|promote|rollback`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fraudkit.cli.app import app, console, load, stdout_is_terminal
from fraudkit.cli.options import ConfigOption, JsonOption, SetOption, dataset_flag, model_flag, seed_flag
from fraudkit.textsafe import for_terminal
from fraudkit.timefmt import utc_text

if TYPE_CHECKING:
    from rich.table import Table

    from fraudkit.config import FraudkitConfig
    from fraudkit.model.evaluate import EvalReport
    from fraudkit.model.train import TrainReport

models_app = typer.Typer(help="Inspect and switch model versions in the registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")

DataOption = Annotated[
    Path | None, typer.Option("--data", help="Dataset file or directory (default: data.path).")
]
DatasetOption = Annotated[
    str | None,
    dataset_flag("Column mapping: a name in configs/datasets or a YAML path (default: data.dataset)."),
]


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return for_terminal(value, 24)  # a manifest may hold anything
    if isinstance(value, int):
        return f"{value:,}"
    return f"{float(value):.{digits}f}"


def _print_json(data: Any) -> None:
    from fraudkit.model.registry import jsonable

    typer.echo(json.dumps(jsonable(data), allow_nan=False, default=str))


def _spark(cfg: FraudkitConfig) -> Any:
    """The Spark session, without Spark's console progress bar (it would garble rich's output)."""
    from fraudkit.data.spark import spark_session

    conf = {"spark.ui.showConsoleProgress": "false", **cfg.spark.conf}
    return spark_session(cfg.spark.model_copy(update={"conf": conf}))


# -- train ----------------------------------------------------------------------------------------


@app.command("train")
def train(
    data: DataOption = None,
    dataset: DatasetOption = None,
    train_from: Annotated[
        str | None,
        typer.Option("--train-from", help="Training window start (date/datetime UTC or epoch ms)."),
    ] = None,
    train_to: Annotated[
        str | None,
        typer.Option("--train-to", help="Training window end; features still use earlier history."),
    ] = None,
    valid_days: Annotated[
        float | None, typer.Option("--valid-days", help="Validation days after a gap of label_delay.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Maximum epochs (early stopping may end sooner).")
    ] = None,
    seed: Annotated[int | None, seed_flag("Seed of initialisation and shuffling.")] = None,
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="Publish the version without making it current.")
    ] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train the MLP on a dataset (Spark features, time-based protocol) and publish it to the registry."""
    from fraudkit.model.train import parse_time_ms, train_from_dataset

    cfg = load(
        config,
        set_,
        data__path=data,
        data__dataset=dataset,
        train__train_from=train_from,
        train__train_to=train_to,
        train__valid_days=valid_days,
        train__epochs=epochs,
        train__seed=seed,
    )
    # Bad times fail before the Spark session starts (seconds).
    parse_time_ms(cfg.train.train_from, "train.train_from")
    parse_time_ms(cfg.train.train_to, "train.train_to")
    quiet = json_output
    with _TrainProgress(cfg.train.epochs, live=stdout_is_terminal() and not quiet, quiet=quiet) as progress:
        report = train_from_dataset(
            cfg,
            cfg.data.path,
            cfg.data.dataset,
            _spark(cfg),
            promote=not no_promote,
            progress=progress.epoch,
            stage=progress.stage,
        )
    if json_output:
        _print_json(_train_report_dict(report))
        return
    _print_train_report(report, cfg.evaluate.top_k)


class _TrainProgress:
    """Rich progress bar in a terminal, one plain line per epoch elsewhere."""

    def __init__(self, epochs: int, live: bool, quiet: bool) -> None:
        self.epochs = epochs
        self.live = live
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _TrainProgress:
        if self.live:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def stage(self, text: str) -> None:
        if self.quiet:
            return
        if self._progress is None:
            console.print(text, markup=False, highlight=False)
            return
        # Finished stages stay on screen as lines; the spinner shows the running one.
        self._progress.console.print(text, markup=False, highlight=False)
        if self._task is None:
            self._task = self._progress.add_task(text, total=None, detail="")
        else:
            self._progress.update(self._task, description=text)

    def epoch(self, report: Any) -> None:
        detail = f"loss {report.loss:.4f}  valid AP {report.valid_ap:.4f}  best {report.best_ap:.4f}"
        if self.quiet:
            return
        if self._progress is None:
            console.print(f"epoch {report.epoch}/{report.epochs}  {detail}", markup=False, highlight=False)
            return
        if self._task is None:
            self._task = self._progress.add_task("training", total=report.epochs, detail="")
        self._progress.update(
            self._task,
            description=f"epoch {report.epoch}/{report.epochs}",
            total=report.epochs,
            completed=report.epoch,
            detail=detail,
        )


def _train_report_dict(report: TrainReport) -> dict[str, Any]:
    return {
        "version": report.version,
        "promoted": report.promoted,
        "threshold": report.threshold,
        "metrics": report.metrics,
        "windows": report.windows.to_dict(),
        "features": report.feature_names,
        "dropped_features": report.dropped_features,
        "data_fingerprint": report.data_fingerprint,
        "dataset_rows": report.dataset_rows,
        "history": report.history,
        "timings": report.timings,
    }


def _print_train_report(report: TrainReport, top_k: int) -> None:
    from rich.table import Table

    metrics = report.metrics
    table = Table(title=f"validation metrics of {report.version}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("ROC AUC", metrics.get("roc_auc")),
        ("average precision", metrics.get("average_precision")),
        (f"card precision@{top_k}", metrics.get(f"card_precision@{top_k}")),
        ("threshold", report.threshold),
        ("precision", metrics.get("precision")),
        ("recall", metrics.get("recall")),
        ("F1", metrics.get("f1")),
        ("training rows", metrics.get("train_rows")),
        ("training frauds", metrics.get("train_frauds")),
        ("validation rows", metrics.get("rows")),
        ("validation frauds", metrics.get("frauds")),
        ("best epoch", metrics.get("best_epoch")),
    ]
    for name, value in rows:
        table.add_row(name, _number(value))
    console.print(table)
    console.print(report.windows.describe(), markup=False, highlight=False)
    if report.dropped_features:
        by_reason: dict[str, list[str]] = {}
        for name, why in report.dropped_features.items():
            by_reason.setdefault(why, []).append(name)
        for why, names in by_reason.items():
            console.print(f"left out ({why}): {', '.join(names)}", markup=False, highlight=False)
    timing = report.timings
    console.print(
        f"{len(report.feature_names)} features; features {timing.get('features_s', 0):.1f} s, "
        f"training {timing.get('fit_s', 0):.1f} s, total {timing.get('total_s', 0):.1f} s",
        markup=False,
        highlight=False,
    )
    state = "now current" if report.promoted else "not promoted (--no-promote)"
    console.print(f"published {report.version} ({state})", markup=False, highlight=False)


# -- evaluate ---------------------------------------------------------------------------------------


@app.command("evaluate")
def evaluate(
    model: Annotated[str, model_flag("vN, current or rules.")] = "current",
    data: DataOption = None,
    dataset: DatasetOption = None,
    from_time: Annotated[
        str | None,
        typer.Option(
            "--from", help="Window start, inclusive (default: the end of the model's validation window)."
        ),
    ] = None,
    to_time: Annotated[
        str | None, typer.Option("--to", help="Window end, exclusive (default: the end of the data).")
    ] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="k of card precision@k per day.")] = None,
    predictions_out: Annotated[
        Path | None,
        typer.Option("--predictions-out", help="Write transaction_id, score, label (.csv, else Parquet)."),
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write PR and ROC curves as PNG here.")] = None,
    rules: Annotated[
        Path | None,
        typer.Option("--rules", help="Backtest this rule file: the rules alone and the model with them."),
    ] = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Score rows in [--from, --to) with a model, the amount rule, a logistic regression and --rules."""
    from fraudkit.model.evaluate import evaluate_model
    from fraudkit.model.registry import Registry
    from fraudkit.model.train import parse_time_ms

    cfg = load(
        config,
        set_,
        data__path=data,
        data__dataset=dataset,
        evaluate__top_k=top_k,
    )

    def stage(text: str) -> None:
        if not json_output:
            console.print(text, markup=False, highlight=False)

    # Bad times or a missing/corrupt model fail before the Spark session starts (seconds).
    from_ms = parse_time_ms(from_time, "--from")
    to_ms = parse_time_ms(to_time, "--to")
    if model != "rules":
        Registry(cfg.registry.path).show(model)
    rule_set = None
    if rules is not None:
        from fraudkit.rules.language import load_rules

        rule_set = load_rules(rules)
    report = evaluate_model(
        cfg,
        cfg.data.path,
        model,
        cfg.data.dataset,
        _spark(cfg),
        from_time=from_ms,
        to_time=to_ms,
        predictions_out=predictions_out,
        plot_dir=plot,
        stage=stage,
        rule_set=rule_set,
    )
    if json_output:
        _print_json(_eval_report_dict(report))
        return
    console.print(_eval_table(report))
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    for path in report.files:
        console.print(f"wrote {path}", markup=False, highlight=False)


def _eval_report_dict(report: EvalReport) -> dict[str, Any]:

    return {
        "data": report.data_path,
        "from": utc_text(report.from_ms),
        "to": utc_text(report.to_ms),
        "rows": report.rows,
        "frauds": report.frauds,
        "top_k": report.top_k,
        "results": [
            {
                "name": r.name,
                "version": r.version,
                "threshold": r.threshold,
                "metrics": r.metrics,
                "card_precision_per_day": r.card_precision_per_day,
            }
            for r in report.results
        ],
        "days": report.days,
        "notes": report.notes,
        "files": report.files,
    }


def _eval_table(report: EvalReport) -> Table:
    from rich.table import Table

    title = (
        f"{report.rows:,} transactions ({report.frauds:,} fraud) in "
        f"[{utc_text(report.from_ms)}, {utc_text(report.to_ms)}), {len(report.days)} days"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for result in report.results:
        header = (
            result.name
            if result.version in ("baseline", "rules")
            else f"{result.name} {result.version}".strip()
        )
        table.add_column(header, justify="right")
    k = report.top_k
    rows = [
        ("ROC AUC", "roc_auc"),
        ("average precision", "average_precision"),
        (f"card precision@{k}", f"card_precision@{k}"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("F1", "f1"),
        ("flagged", "flagged"),
    ]
    for label, key in rows:
        table.add_row(label, *[_number(r.metrics.get(key)) for r in report.results])
    table.add_row("threshold", *[_number(r.threshold) for r in report.results])
    return table


# -- models ---------------------------------------------------------------------------------------


@models_app.command("list")
def list_models(json_output: JsonOption = False, config: ConfigOption = None, set_: SetOption = None) -> None:
    """List versions with status and validation figures (current marked with *)."""
    from dataclasses import asdict

    from rich.table import Table

    from fraudkit.model.registry import Registry

    cfg = load(config, set_)
    infos = Registry(cfg.registry.path).list()
    if json_output:
        _print_json([asdict(info) for info in infos])
        return
    if not infos:
        console.print(f"no models in {cfg.registry.path}; train one with `fraudkit train`", markup=False)
        return
    k = cfg.evaluate.top_k
    table = Table()
    for column in ("", "version", "status", "created (UTC)", "AP", f"CP@{k}", "threshold", "trainer"):
        table.add_column(column, justify="right" if column in ("AP", f"CP@{k}", "threshold") else "left")
    for info in infos:
        table.add_row(
            "*" if info.is_current else "",
            for_terminal(info.version),
            for_terminal(info.status),
            for_terminal(info.created_at or ""),
            _number(info.metrics.get("average_precision")),
            _number(info.metrics.get(f"card_precision@{k}")),
            _number(info.threshold),
            for_terminal(info.trainer or (info.problem or "")),
        )
    console.print(table)


@models_app.command("show")
def show_model(
    version: Annotated[str, typer.Argument(help="vN or current.")] = "current",
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Print a version's verified manifest as JSON."""
    from fraudkit.model.registry import Registry

    cfg = load(config, set_)
    _print_json(Registry(cfg.registry.path).show(version))


@models_app.command("promote")
def promote_model(
    version: Annotated[str, typer.Argument(help="The version to make current (vN).")],
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Make a version current (verified first); detectors pick it up on their next check."""
    from fraudkit.model.registry import Registry

    cfg = load(config, set_)
    registry = Registry(cfg.registry.path)
    before = registry.current_version()
    now = registry.promote(version)
    console.print(f"current model: {now} (was {before or 'none'})", markup=False, highlight=False)


@models_app.command("rollback")
def rollback_model(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Point `current` back at the previously current version."""
    from fraudkit.model.registry import Registry

    cfg = load(config, set_)
    registry = Registry(cfg.registry.path)
    before = registry.current_version()
    now = registry.rollback()
    console.print(f"current model: {now} (was {before})", markup=False, highlight=False)
