"""Dataset column mappings (`configs/datasets/*.yaml`) and loading into the canonical frame.

A mapping names, for each fraudkit field, the column of the user's file that holds it, how its
timestamps are written, and which numeric columns pass through to the model unchanged. Shipped
mappings live in the package (`fraudkit/configs/datasets/`); `configs/datasets/` at the repository
root links there, and a project's own `./configs/datasets/NAME.yaml` is found first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudkit.config import read_yaml_file
from fraudkit.errors import ConfigError, DataError
from fraudkit.schema import (
    CANONICAL_COLUMNS,
    FILE_COLUMNS,
    MAX_AMOUNT,
    MAX_EVENT_MS,
    MIN_EVENT_MS,
    TEXT_COLUMNS,
)
from fraudkit.timefmt import datetime_ms, iso_ms

if TYPE_CHECKING:
    import numpy
    import pandas
    import pyarrow
    from pyspark.sql import Column, SparkSession
    from pyspark.sql import DataFrame as SparkDataFrame

PACKAGE_MAPPINGS = Path(__file__).parent.parent / "configs" / "datasets"
PROJECT_MAPPINGS = Path("configs") / "datasets"

# A mapping names the user columns for these fields (the fraudkit file layout).
FIELDS = FILE_COLUMNS
REQUIRED_FIELDS = ("timestamp", "amount", "label")
STRING_FIELDS = TEXT_COLUMNS
TIMESTAMP_UNITS = {"datetime": 0.0, "s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
GENERATED_ID_PREFIX = "row-"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAPPING_KEYS = {"name", "description", "base", "columns", "timestamp", "passthrough"}


@dataclass
class DatasetMapping:
    """How a file's columns map onto fraudkit's fields (see configs/datasets/*.yaml)."""

    name: str
    columns: dict[str, str]
    passthrough: list[str] = field(default_factory=list)
    timestamp_unit: str = "datetime"
    timestamp_origin_ms: int = 0
    description: str = ""
    source: str = ""

    def column(self, field_name: str) -> str | None:
        """The file column holding a fraudkit field, or None when the dataset lacks it."""
        return self.columns.get(field_name)

    @property
    def has_card(self) -> bool:
        return "card_id" in self.columns

    @property
    def has_customer(self) -> bool:
        return "customer_id" in self.columns

    @property
    def has_terminal(self) -> bool:
        return "terminal_id" in self.columns

    @property
    def has_location(self) -> bool:
        return "lat" in self.columns and "lon" in self.columns

    @property
    def has_country(self) -> bool:
        return "country" in self.columns

    @property
    def has_merchant(self) -> bool:
        return "merchant_category" in self.columns

    def file_columns(self) -> list[str]:
        """Every column the file must have, in field order then pass-through order."""
        names = [self.columns[f] for f in FIELDS if f in self.columns]
        return list(dict.fromkeys([*names, *self.passthrough]))


# -- mappings ---------------------------------------------------------------------------------


def shipped_mappings() -> list[str]:
    """Names of the mappings shipped with fraudkit."""
    return sorted(p.stem for p in PACKAGE_MAPPINGS.glob("*.yaml"))


def _mapping_file(name_or_path: str) -> Path:
    text = str(name_or_path).strip()
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"dataset mapping file not found: {path}")
        return path
    if not _NAME.match(text):
        raise ConfigError(f"dataset {text!r}: not a mapping name or a .yaml file")
    for folder in (Path.cwd() / PROJECT_MAPPINGS, PACKAGE_MAPPINGS):
        candidate = folder / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"unknown dataset {text!r}: shipped mappings are {', '.join(shipped_mappings())}; "
        "or give the path of a mapping .yaml file"
    )


def _read_mapping_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml_file(path, "dataset mapping")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a dataset mapping must be a YAML mapping")
    unknown = sorted(set(data) - _MAPPING_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_MAPPING_KEYS))})"
        )
    return data


def load_mapping(name_or_path: str) -> DatasetMapping:
    """A shipped mapping by name (fraudkit, creditcard, handbook) or a mapping YAML file."""
    return _load_mapping(name_or_path, seen=())


def _load_mapping(name_or_path: str, seen: tuple[str, ...]) -> DatasetMapping:
    path = _mapping_file(name_or_path)
    if str(path.resolve()) in seen:
        raise ConfigError(f"{path}: `base` refers back to itself")
    data = _read_mapping_yaml(path)
    columns: dict[str, str] = {}
    passthrough: list[str] = []
    unit, origin_ms = "datetime", 0
    if data.get("base") is not None:
        # `base: fraudkit` + `passthrough: [...]` reads split outputs and keeps extra features.
        base = _load_mapping(str(data["base"]), (*seen, str(path.resolve())))
        columns, passthrough = dict(base.columns), list(base.passthrough)
        unit, origin_ms = base.timestamp_unit, base.timestamp_origin_ms

    raw_columns = data.get("columns") or {}
    if not isinstance(raw_columns, dict):
        raise ConfigError(f"{path}: columns: must map fraudkit fields to column names")
    for key, value in raw_columns.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: columns.{key}: unknown field (fields: {', '.join(FIELDS)})")
        if value is None or value == "":
            columns.pop(key, None)
        elif isinstance(value, str | int):
            columns[key] = str(value)
        else:
            raise ConfigError(f"{path}: columns.{key}: must be a column name or null")
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise ConfigError(f"{path}: columns: {', '.join(missing)} must be mapped to a column")

    stamp = data.get("timestamp") or {}
    if not isinstance(stamp, dict) or set(stamp) - {"unit", "origin"}:
        raise ConfigError(f"{path}: timestamp: expected keys unit and origin")
    unit = str(stamp.get("unit", unit))
    if unit not in TIMESTAMP_UNITS:
        raise ConfigError(
            f"{path}: timestamp.unit: must be one of {', '.join(TIMESTAMP_UNITS)}, got {unit!r}"
        )
    if stamp.get("origin") not in (None, "", "epoch"):
        origin_ms = _parse_origin(path, stamp["origin"])
    elif "origin" in stamp:
        origin_ms = 0

    if "passthrough" in data:
        raw_passthrough = data.get("passthrough") or []
        if not isinstance(raw_passthrough, list) or not all(
            isinstance(c, str | int) for c in raw_passthrough
        ):
            raise ConfigError(f"{path}: passthrough: must be a list of column names")
        passthrough = [str(c) for c in raw_passthrough]
    clash = sorted(set(passthrough) & (set(CANONICAL_COLUMNS) | set(columns.values())))
    if clash:
        raise ConfigError(f"{path}: passthrough: {', '.join(clash)} already used as a fraudkit field")

    name = str(data.get("name") or path.stem)
    return DatasetMapping(
        name=name,
        columns=columns,
        passthrough=passthrough,
        timestamp_unit=unit,
        timestamp_origin_ms=origin_ms,
        description=str(data.get("description") or ""),
        source=str(path),
    )


def _parse_origin(path: Path, value: Any) -> int:
    if isinstance(value, datetime):
        return datetime_ms(value)
    try:
        return iso_ms(str(value))
    except ValueError:
        raise ConfigError(f"{path}: timestamp.origin: not an ISO date or time: {value!r}") from None


# -- error messages ---------------------------------------------------------------------------


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() in (".csv", ".txt") or path.name.lower().endswith((".csv.gz", ".csv.bz2"))


def bad_row_message(path: Path | str, column: str, row: int, problem: str, value: Any, csv: bool) -> str:
    """One line naming the file, the column and the first bad row (1-based; CSV also gives its line)."""
    where = f"row {row} (line {row + 1})" if csv else f"row {row}"
    shown = "empty" if value is None or (isinstance(value, float) and value != value) else repr(value)
    if isinstance(value, str) and len(value) > 40:
        shown = repr(value[:40] + "...")
    return f"{path}: column {column!r}, {where}: {problem}: {shown}"


def _missing_columns_message(path: Path | str, mapping: DatasetMapping, present: list[str]) -> str:
    by_column = {v: k for k, v in mapping.columns.items()}
    needed = mapping.file_columns()
    missing = [c for c in needed if c not in present]
    described = [f"{c!r} ({by_column.get(c, 'pass-through')})" for c in missing[:8]]
    more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
    shown = ", ".join(present[:15]) + (", ..." if len(present) > 15 else "")
    return (
        f"{path}: missing column(s) {', '.join(described)}{more} required by dataset "
        f"{mapping.name!r}; the file has: {shown or 'no columns'}"
    )


# -- pandas -----------------------------------------------------------------------------------


def _ensure_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"dataset not found: {path}")


def file_columns(path: Path | str) -> list[str]:
    """Column names of a CSV or Parquet dataset (reads only the header or the schema)."""
    path = Path(path)
    _ensure_exists(path)
    try:
        if _is_csv(path):
            import pyarrow.csv as pa_csv

            with pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=1 << 20)) as reader:
                return list(reader.schema.names)
        import pyarrow.dataset as pa_dataset

        return list(pa_dataset.dataset(path, format="parquet").schema.names)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot read as {'CSV' if _is_csv(path) else 'Parquet'}: {_first_line(exc)}"
        ) from None


def check_columns(path: Path | str, mapping: DatasetMapping) -> None:
    """Raise DataError naming the file and the missing columns if the mapping does not fit."""
    present = file_columns(path)
    if any(c not in present for c in mapping.file_columns()):
        raise DataError(_missing_columns_message(path, mapping, present))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_table(path: Path, mapping: DatasetMapping) -> pyarrow.Table:
    import pyarrow as pa

    check_columns(path, mapping)
    needed = mapping.file_columns()
    try:
        if _is_csv(path):
            import pyarrow.csv as pa_csv

            # Everything as text: ids keep their leading zeros and bad numbers can be reported.
            convert = pa_csv.ConvertOptions(
                include_columns=needed,
                column_types={c: pa.string() for c in needed},
                strings_can_be_null=True,
                null_values=[""],
            )
            return pa_csv.read_csv(path, convert_options=convert)
        import pyarrow.dataset as pa_dataset

        return pa_dataset.dataset(path, format="parquet").to_table(columns=needed)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read: {_first_line(exc)}") from None


class _Checker:
    """Collects the first bad row of every check; the earliest row in the file is reported."""

    def __init__(self, path: Path, csv: bool) -> None:
        self.path, self.csv = path, csv
        self.failures: list[tuple[int, int, str, str, Any]] = []

    def fail(self, column: str, bad: numpy.ndarray, problem: str, values: Any) -> None:
        import numpy as np

        hits = np.flatnonzero(bad)
        if len(hits):
            row = int(hits[0])
            value: Any = values[row] if values is not None else None
            if isinstance(value, np.generic):
                value = value.item()
            self.failures.append((row, len(self.failures), column, problem, value))

    def raise_first(self) -> None:
        if self.failures:
            row, _, column, problem, value = min(self.failures, key=lambda f: (f[0], f[1]))
            raise DataError(bad_row_message(self.path, column, row + 1, problem, value, self.csv))


class _LazyValues:
    """Index access to an Arrow column's Python values, converted only when an error is reported."""

    def __init__(self, array: pyarrow.ChunkedArray) -> None:
        self.array = array

    def __getitem__(self, row: int) -> Any:
        return self.array[row].as_py()


def _as_text(array: pyarrow.ChunkedArray) -> pandas.Series:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        array = pc.cast(array, kind.value_type)
    elif pa.types.is_floating(kind):
        # Ids stored as floats (a pandas habit with missing values) print 12.0 as "12".
        values = array.to_numpy()
        finite = np.isfinite(values)
        if finite.all() and (values == np.round(values)).all():
            array = pc.cast(array, pa.int64())
    return pc.cast(array, pa.string()).to_pandas()


def _as_number(check: _Checker, column: str, array: pyarrow.ChunkedArray, allow_null: bool) -> numpy.ndarray:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_boolean(array.type):
        array = pc.cast(array, pa.int8())
    raw: Any
    if pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
        values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
        raw = values
    else:
        text = _as_text(array).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        raw = _LazyValues(array)
        spelled_nan = text.str.lower().eq("nan").fillna(False).to_numpy(bool)
        check.fail(column, text.notna().to_numpy() & np.isnan(values) & ~spelled_nan, "not a number", raw)
    if not allow_null:
        check.fail(column, np.isnan(values), "missing value", raw)
    check.fail(column, np.isinf(values), "not a finite number", raw)
    return values


def _timestamps(check: _Checker, mapping: DatasetMapping, array: pyarrow.ChunkedArray) -> numpy.ndarray:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    column = mapping.columns["timestamp"]
    raw = _LazyValues(array)
    kind = array.type
    if mapping.timestamp_unit != "datetime":
        numbers = _as_number(check, column, array, allow_null=False)
        millis_float = mapping.timestamp_origin_ms + numbers * TIMESTAMP_UNITS[mapping.timestamp_unit]
        values = np.round(np.nan_to_num(millis_float, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.int64)
        bad_range = ~np.isnan(millis_float) & ((millis_float < MIN_EVENT_MS) | (millis_float >= MAX_EVENT_MS))
        check.fail(column, bad_range, "timestamp outside 2000-2100", raw)
        return values
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        # Naive timestamps are UTC; zoned ones are already stored as UTC instants.
        unit = kind.unit if pa.types.is_timestamp(kind) else "ms"
        naive = (
            pc.cast(array, pa.timestamp(unit))
            if pa.types.is_timestamp(kind)
            else pc.cast(array, pa.timestamp("ms"))
        )
        millis = pc.cast(pc.cast(naive, pa.timestamp("ms")), pa.int64())
        nulls = pc.is_null(millis).to_numpy(zero_copy_only=False)
        check.fail(column, nulls, "missing timestamp", None)
        values = np.where(nulls, 0, millis.to_numpy(zero_copy_only=False)).astype(np.int64)
        check.fail(
            column,
            ~nulls & ((values < MIN_EVENT_MS) | (values >= MAX_EVENT_MS)),
            "timestamp outside 2000-2100",
            raw,
        )
        return values
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind)):
        raise DataError(
            f"{check.path}: column {column!r} holds {kind} values, not date-times; set timestamp.unit "
            f"(s, ms, us or ns) and timestamp.origin in dataset mapping {mapping.name!r}"
        )
    text = _as_text(array).str.strip()
    parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    missing = text.isna().to_numpy()
    unparsed = parsed.isna().to_numpy()
    check.fail(column, missing, "missing timestamp", raw)
    check.fail(column, unparsed & ~missing, "unparseable timestamp", raw)
    millis_float = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")).to_numpy(
        np.float64, na_value=np.nan
    )
    values = np.nan_to_num(millis_float, nan=0.0).astype(np.int64)
    check.fail(
        column,
        ~unparsed & ((values < MIN_EVENT_MS) | (values >= MAX_EVENT_MS)),
        "timestamp outside 2000-2100",
        raw,
    )
    return values


def load_frame(path: Path | str, mapping: DatasetMapping) -> pandas.DataFrame:
    """The canonical frame of a CSV or Parquet dataset, validated, sorted by event time."""
    import numpy as np
    import pandas as pd

    path = Path(path)
    _ensure_exists(path)
    table = _read_table(path, mapping)
    check = _Checker(path, _is_csv(path))
    rows = table.num_rows
    columns: dict[str, Any] = {}

    id_column = mapping.column("transaction_id")
    if id_column is None:
        columns["transaction_id"] = pd.Series(
            [f"{GENERATED_ID_PREFIX}{i:09d}" for i in range(1, rows + 1)], dtype="str"
        )
    else:
        ids = _as_text(table.column(id_column))
        missing_id = ids.isna().to_numpy()
        check.fail(id_column, missing_id, "missing transaction id", None)
        check.fail(
            id_column,
            ids.duplicated().to_numpy() & ~missing_id,
            "duplicate transaction id",
            _LazyValues(table.column(id_column)),
        )
        columns["transaction_id"] = ids

    columns["event_time_ms"] = _timestamps(check, mapping, table.column(mapping.columns["timestamp"]))
    for name in ("card_id", "customer_id", "terminal_id"):
        source = mapping.column(name)
        columns[name] = _as_text(table.column(source)) if source else _nulls(rows)

    amount_column = mapping.columns["amount"]
    amount = _as_number(check, amount_column, table.column(amount_column), allow_null=False)
    raw_amount = _LazyValues(table.column(amount_column))
    check.fail(amount_column, amount < 0, "negative amount", raw_amount)
    check.fail(amount_column, amount > MAX_AMOUNT, f"amount above {MAX_AMOUNT:,.0f}", raw_amount)
    columns["amount"] = amount

    for name in ("currency", "merchant_category", "country"):
        source = mapping.column(name)
        columns[name] = _as_text(table.column(source)) if source else _nulls(rows)
    for name, limit in (("lat", 90.0), ("lon", 180.0)):
        source = mapping.column(name)
        if source is None:
            columns[name] = np.full(rows, np.nan)
            continue
        values = _as_number(check, source, table.column(source), allow_null=True)
        check.fail(
            source, np.abs(values) > limit, f"{name} outside ±{limit:g}", _LazyValues(table.column(source))
        )
        columns[name] = values

    label_column = mapping.columns["label"]
    label = _as_number(check, label_column, table.column(label_column), allow_null=False)
    bad_label = ~np.isnan(label) & (label != 0) & (label != 1)
    check.fail(label_column, bad_label, "label must be 0 or 1", _LazyValues(table.column(label_column)))
    columns["label"] = np.nan_to_num(label).astype(np.int64)

    scenario = mapping.column("fraud_scenario")
    # CSV cannot tell "" from missing; a mapped scenario column is "" for every legit row.
    columns["fraud_scenario"] = _as_text(table.column(scenario)).fillna("") if scenario else _nulls(rows)
    for name in mapping.passthrough:
        columns[name] = _as_number(check, name, table.column(name), allow_null=False)
    check.raise_first()

    frame = pd.DataFrame({name: _plain(value) for name, value in columns.items()})
    if not _is_sorted(frame):
        frame = frame.sort_values(["event_time_ms", "transaction_id"], kind="stable", ignore_index=True)
    return frame


def _is_sorted(frame: pandas.DataFrame) -> bool:
    """True when rows are already in (event_time_ms, transaction_id) order (cheap: ties are rare)."""
    import numpy as np

    times = frame["event_time_ms"].to_numpy()
    if len(times) < 2:
        return True
    step = np.diff(times)
    if (step < 0).any():
        return False
    ties = np.flatnonzero(step == 0)
    ids = frame["transaction_id"].to_numpy(object)
    return all(ids[i] <= ids[i + 1] for i in ties.tolist())


def _nulls(rows: int) -> pandas.Series:
    import pyarrow as pa

    return pa.nulls(rows, pa.string()).to_pandas()


def _plain(value: Any) -> Any:
    import pandas as pd

    return value.reset_index(drop=True) if isinstance(value, pd.Series) else value


# -- Spark ------------------------------------------------------------------------------------


def _spark_readable_parquet(path: Path) -> str:
    """`path`, or a copy with its nanosecond timestamps cast to microseconds.

    pandas writes datetime64[ns] columns as Parquet TIMESTAMP(NANOS), which Spark refuses
    ("Illegal Parquet type: INT64 (TIMESTAMP(NANOS,false))"); its only switch,
    spark.sql.legacy.parquet.nanosAsLong, turns them into bare numbers for the whole session.
    Microseconds are finer than any event time fraudkit keeps (milliseconds), so the copy,
    written batch by batch and removed when the process exits, loses nothing that is used.
    """
    import atexit
    import shutil
    import tempfile

    import pyarrow as pa
    import pyarrow.dataset as pa_dataset
    import pyarrow.parquet as pq

    try:
        dataset = pa_dataset.dataset(str(path), format="parquet")
    except (OSError, pa.ArrowException):
        return str(path)  # Spark reports what is wrong with it
    schema = dataset.schema
    nanos = {
        index
        for index, column in enumerate(schema)
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns"
    }
    if not nanos:
        return str(path)
    target = pa.schema(
        [
            column.with_type(pa.timestamp("us", column.type.tz)) if index in nanos else column
            for index, column in enumerate(schema)
        ],
        metadata=schema.metadata,
    )
    directory = Path(tempfile.mkdtemp(prefix="fraudkit-us-timestamps-"))
    atexit.register(shutil.rmtree, directory, True)
    copy = directory / f"{path.stem}.parquet"
    try:
        with pq.ParquetWriter(copy, target) as writer:
            for batch in dataset.to_batches():
                columns = [
                    batch.column(i).cast(target.field(i).type, safe=False) if i in nanos else batch.column(i)
                    for i in range(batch.num_columns)
                ]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=target))
    except (OSError, pa.ArrowException) as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise DataError(f"{path}: cannot convert its nanosecond timestamps for Spark: {exc}") from None
    return str(copy)


def load_spark(
    spark: SparkSession, path: Path | str, mapping: DatasetMapping, validate: bool = True
) -> SparkDataFrame:
    """The canonical columns of a CSV or Parquet dataset as a Spark DataFrame, validated.

    Validation is one extra pass over the data (`validate=False` skips it for input already
    checked); unlike `load_frame` it does not look for duplicate transaction ids.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.window import Window

    location = str(path)
    local = "://" not in location
    if local:
        _ensure_exists(Path(location))
    csv = _is_csv(Path(location))
    readable = location if csv or not local else _spark_readable_parquet(Path(location))
    try:
        reader = spark.read
        raw = (
            reader.option("header", True)
            .option("inferSchema", False)
            .option("mode", "PERMISSIVE")
            .csv(location)
            if csv
            else reader.parquet(readable)
        )
    except Exception as exc:  # pyspark raises AnalysisException and friends for unreadable input
        raise DataError(f"{location}: cannot read: {_first_line(exc)}") from None
    present = list(raw.columns)
    if any(c not in present for c in mapping.file_columns()):
        raise DataError(_missing_columns_message(location, mapping, present))

    row_id = "__fraudkit_row"
    raw = raw.select(*[F.col(_quote(c)) for c in mapping.file_columns()]).withColumn(
        row_id, F.monotonically_increasing_id()
    )
    types = {f.name: f.dataType for f in raw.schema.fields}
    checks: list[tuple[str, Column, str]] = []  # (file column, bad-row condition, problem)

    def source(name: str) -> Column:
        return F.col(_quote(name))

    def number(name: str, allow_null: bool) -> Column:
        kind = types[name]
        if isinstance(kind, T.BooleanType | T.NumericType):
            value = source(name).cast("double")
        else:
            text = F.trim(source(name).cast("string"))
            value = text.try_cast("double")
            garbage = source(name).isNotNull() & value.isNull() & (F.lower(text) != F.lit("nan"))
            checks.append((name, garbage, "not a number"))
        if not allow_null:
            checks.append((name, value.isNull() | F.isnan(value), "missing value"))
        checks.append((name, F.abs(value) == F.lit(float("inf")), "not a finite number"))
        return value

    columns: dict[str, Column] = {}
    id_column = mapping.column("transaction_id")
    if id_column is None:
        number_in_file = F.row_number().over(Window.orderBy(row_id))
        columns["transaction_id"] = F.concat(
            F.lit(GENERATED_ID_PREFIX), F.format_string("%09d", number_in_file)
        )
    else:
        ids = _spark_text(source(id_column), types[id_column])
        checks.append((id_column, ids.isNull(), "missing transaction id"))
        columns["transaction_id"] = ids

    stamp = mapping.columns["timestamp"]
    if mapping.timestamp_unit != "datetime":
        seconds = number(stamp, allow_null=False)
        millis = F.round(
            F.lit(float(mapping.timestamp_origin_ms))
            + seconds * F.lit(TIMESTAMP_UNITS[mapping.timestamp_unit])
        ).cast("long")
    else:
        kind = types[stamp]
        if isinstance(kind, T.TimestampType | T.TimestampNTZType | T.DateType):
            moment = source(stamp).cast("timestamp")
            checks.append((stamp, moment.isNull(), "missing timestamp"))
        elif isinstance(kind, T.StringType):
            moment = F.try_to_timestamp(F.trim(source(stamp)))
            checks.append((stamp, source(stamp).isNull(), "missing timestamp"))
            checks.append((stamp, moment.isNull(), "unparseable timestamp"))
        else:
            raise DataError(
                f"{location}: column {stamp!r} holds {kind.simpleString()} values, not date-times; set "
                f"timestamp.unit (s, ms, us or ns) and timestamp.origin in dataset mapping {mapping.name!r}"
            )
        millis = F.unix_millis(moment)
    checks.append((stamp, (millis < MIN_EVENT_MS) | (millis >= MAX_EVENT_MS), "timestamp outside 2000-2100"))
    columns["event_time_ms"] = millis

    for name in ("card_id", "customer_id", "terminal_id"):
        column = mapping.column(name)
        columns[name] = _spark_text(source(column), types[column]) if column else F.lit(None).cast("string")

    amount_column = mapping.columns["amount"]
    amount = number(amount_column, allow_null=False)
    checks.append((amount_column, amount < 0, "negative amount"))
    checks.append((amount_column, amount > MAX_AMOUNT, f"amount above {MAX_AMOUNT:,.0f}"))
    columns["amount"] = amount

    for name in ("currency", "merchant_category", "country"):
        column = mapping.column(name)
        columns[name] = _spark_text(source(column), types[column]) if column else F.lit(None).cast("string")
    for name, limit in (("lat", 90.0), ("lon", 180.0)):
        column = mapping.column(name)
        if column is None:
            columns[name] = F.lit(None).cast("double")
            continue
        value = number(column, allow_null=True)
        checks.append((column, F.abs(value) > limit, f"{name} outside ±{limit:g}"))
        columns[name] = value

    label_column = mapping.columns["label"]
    label = number(label_column, allow_null=False)
    checks.append((label_column, ~label.isin(0.0, 1.0), "label must be 0 or 1"))
    columns["label"] = label.cast("int")
    scenario = mapping.column("fraud_scenario")
    columns["fraud_scenario"] = (
        F.coalesce(_spark_text(source(scenario), types[scenario]), F.lit(""))
        if scenario
        else F.lit(None).cast("string")
    )
    for name in mapping.passthrough:
        columns[name] = number(name, allow_null=False)

    if validate:
        _raise_first_bad_row(raw, row_id, checks, location, csv)
    return raw.select(*[value.alias(name) for name, value in columns.items()])


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _spark_text(column: Column, kind: Any) -> Column:
    from pyspark.sql import types as T

    if isinstance(kind, T.FloatType | T.DoubleType):
        # Ids stored as floats print as 12 rather than 12.0 when they are whole numbers.
        whole = column == column.cast("long").cast("double")
        return _when(whole, column.cast("long").cast("string"), column.cast("string"))
    return column.cast("string")


def _when(condition: Column, then: Column, otherwise: Column) -> Column:
    from pyspark.sql import functions as F

    return F.when(condition, then).otherwise(otherwise)


def _raise_first_bad_row(
    raw: SparkDataFrame, row_id: str, checks: list[tuple[str, Column, str]], location: str, csv: bool
) -> None:
    """One pass finds the first failing row of every check; only a failure costs more jobs."""
    from pyspark.sql import functions as F

    if not checks:
        return
    aggregates = [
        F.min(F.when(condition, F.col(row_id))).alias(f"c{i}") for i, (_, condition, _) in enumerate(checks)
    ]
    first = raw.agg(*aggregates).first()
    if first is None:
        return
    failures = [(first[f"c{i}"], i) for i in range(len(checks)) if first[f"c{i}"] is not None]
    if not failures:
        return
    bad_id, index = min(failures)
    column, _, problem = checks[index]
    row = raw.filter(F.col(row_id) < bad_id).count() + 1
    value_row = raw.filter(F.col(row_id) == bad_id).select(F.col(_quote(column))).first()
    value = value_row[0] if value_row is not None else None
    raise DataError(bad_row_message(location, column, row, problem, value, csv))
