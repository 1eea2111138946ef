"""`fraudkit simulate` and `fraudkit split`: the datasets everything else trains and replays on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from fraudkit.cli.app import app, console, err_console, load
from fraudkit.cli.options import ConfigOption, SetOption, dataset_flag, seed_flag
from fraudkit.errors import ConfigError
from fraudkit.timefmt import utc_text

DatasetOption = Annotated[
    str | None,
    dataset_flag(
        "Column mapping: fraudkit, creditcard, handbook, or a mapping .yaml (default: data.dataset).",
        show_default=False,
    ),
]


@app.command("simulate")
def simulate(
    customers: Annotated[int | None, typer.Option("--customers", help="Number of customers.")] = None,
    terminals: Annotated[
        int | None, typer.Option("--terminals", help="Number of terminals/merchants.")
    ] = None,
    days: Annotated[int | None, typer.Option("--days", help="Days of transactions.")] = None,
    start_date: Annotated[
        str | None, typer.Option("--start-date", help="First day (UTC), e.g. 2026-01-01.")
    ] = None,
    seed: Annotated[int | None, seed_flag("Random seed: same seed, same bytes.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file.")] = None,
    format: Annotated[
        Literal["parquet", "csv"] | None, typer.Option("--format", help="parquet (default) or csv.")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write a labelled synthetic card-payment dataset with tagged fraud scenarios."""
    cfg = load(
        config,
        set_,
        simulate__customers=customers,
        simulate__terminals=terminals,
        simulate__days=days,
        simulate__start_date=start_date,
        simulate__seed=seed,
        simulate__out=out,
        simulate__format=format,
    )
    settings = cfg.simulate
    if out is None and settings.format == "csv" and settings.out.suffix == ".parquet":
        settings = settings.model_copy(update={"out": settings.out.with_suffix(".csv")})

    from fraudkit.data.simulate import simulate_to_file

    summary = simulate_to_file(settings)
    table = Table(title=f"simulated {summary.rows:,} transactions", title_justify="left")
    table.add_column("fraud scenario")
    table.add_column("transactions", justify="right")
    table.add_column("share of frauds", justify="right")
    for name, count in summary.frauds_by_scenario.items():
        share = count / summary.frauds if summary.frauds else 0.0
        table.add_row(name, f"{count:,}", f"{share:.1%}")
    table.add_row("[bold]all frauds[/]", f"[bold]{summary.frauds:,}[/]", f"rate {summary.fraud_rate:.3%}")
    console.print(table)
    console.print(
        f"{summary.customers:,} customers, {summary.terminals:,} terminals, "
        f"{utc_text(summary.start_ms)} .. {utc_text(summary.end_ms)} UTC",
        soft_wrap=True,
    )
    console.print(
        f"wrote {summary.path} ({summary.format}) in {summary.simulate_s + summary.write_s:.1f} s "
        f"(simulate {summary.simulate_s:.1f} s, write {summary.write_s:.1f} s)",
        soft_wrap=True,
        highlight=False,
    )


@app.command("split")
def split(
    dataset: DatasetOption = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset file or directory to split (default: data.path).")
    ] = None,
    # The flag's former name, kept working (hidden): `--data` is its name in every command.
    input_alias: Annotated[Path | None, typer.Option("--input", "-i", hidden=True)] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Split instant (UTC), e.g. 2026-03-01T00:00:00.")
    ] = None,
    train_fraction: Annotated[
        float | None,
        typer.Option("--train-fraction", help="Share of the time range for history (default: split.*)."),
    ] = None,
    history_out: Annotated[
        Path | None, typer.Option("--history-out", help="History part (default: data.history_path).")
    ] = None,
    stream_out: Annotated[
        Path | None, typer.Option("--stream-out", help="Stream part (default: data.stream_path).")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Split a dataset by event time into history (training) and stream (replay) Parquet, on Spark."""
    if data is not None and input_alias is not None and data != input_alias:
        raise ConfigError(f"--data {data} and its alias --input {input_alias} name different datasets")
    data = data if data is not None else input_alias
    cfg = load(
        config,
        set_,
        data__dataset=dataset,
        data__path=data,
        data__history_path=history_out,
        data__stream_path=stream_out,
        split__train_fraction=train_fraction,
    )

    from fraudkit.data.split import run_split
    from fraudkit.textsafe import printable

    def progress(line: str) -> None:
        err_console.print(printable(line), markup=False, highlight=False, soft_wrap=True)

    report = run_split(cfg, at=at, train_fraction=train_fraction, progress=progress)
    table = Table(
        title=f"split {report.input_path} ({report.dataset}) at {utc_text(report.boundary_ms)} UTC",
        title_justify="left",
    )
    table.add_column("part", no_wrap=True)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("frauds", justify="right", no_wrap=True)
    # The header may wrap so the table fits 80 columns; the figures never do.
    table.add_column("fraud rate", justify="right")
    table.add_column("from (UTC)", no_wrap=True)
    table.add_column("to (UTC)", no_wrap=True)
    for part in report.parts:
        table.add_row(
            part.name,
            f"{part.rows:,}",
            f"{part.frauds:,}",
            f"{part.fraud_rate:.2%}",
            utc_text(part.start_ms)[:16],
            utc_text(part.end_ms)[:16],
        )
    console.print(table)
    for part in report.parts:
        console.print(f"{part.name}: {part.path}", soft_wrap=True, highlight=False)
    if report.passthrough:
        console.print(
            f"pass-through columns kept: {', '.join(report.passthrough)}; read the parts with a mapping "
            "that says `base: fraudkit` and lists them under `passthrough`",
            soft_wrap=True,
        )
