"""The SQL layer of `sink` and `report`: URLs, the fraud_predictions schema, idempotent batch writes.

SQLite (stdlib sqlite3) and PostgreSQL (psycopg 3) share one schema and one write protocol:
rows are staged in a connection-local temporary table (COPY on PostgreSQL, executemany on SQLite)
and moved with INSERT ... SELECT ... ON CONFLICT (transaction_id), all in one transaction, so a
redelivered batch never duplicates a row. See docs/database.md.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from fraudkit.errors import ConfigError, DatabaseError
from fraudkit.redact import MASK, mask_secrets

Dialect = Literal["sqlite", "postgresql"]

# (name, SQLite type, PostgreSQL type) of fraud_predictions, in column order.
PREDICTION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("transaction_id", "TEXT NOT NULL PRIMARY KEY", "TEXT NOT NULL PRIMARY KEY"),
    ("event_time_ms", "INTEGER", "BIGINT"),
    ("card_id", "TEXT", "TEXT"),
    ("terminal_id", "TEXT", "TEXT"),
    ("amount", "REAL", "DOUBLE PRECISION"),
    ("currency", "TEXT", "TEXT"),
    ("country", "TEXT", "TEXT"),
    ("merchant_category", "TEXT", "TEXT"),
    ("score", "REAL", "DOUBLE PRECISION"),
    ("decision", "TEXT", "TEXT"),
    ("threshold", "REAL", "DOUBLE PRECISION"),
    ("model_version", "TEXT", "TEXT"),
    ("reasons", "TEXT", "JSONB"),
    ("produced_ms", "INTEGER", "BIGINT"),
    ("consumed_ms", "INTEGER", "BIGINT"),
    ("verdict_ms", "INTEGER", "BIGINT"),
    ("detector", "TEXT", "TEXT"),
    ("written_ms", "INTEGER", "BIGINT"),
    ("label", "INTEGER", "SMALLINT"),
    ("fraud_scenario", "TEXT", "TEXT"),
    ("labelled_ms", "INTEGER", "BIGINT"),
)
# Columns filled from the labels table rather than from the verdict itself.
LABEL_FIELDS = ("label", "fraud_scenario", "labelled_ms")
VERDICT_FIELDS: tuple[str, ...] = tuple(
    name for name, _, _ in PREDICTION_COLUMNS if name not in (*LABEL_FIELDS, "written_ms")
)

LABEL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("transaction_id", "TEXT NOT NULL PRIMARY KEY", "TEXT NOT NULL PRIMARY KEY"),
    ("event_time_ms", "INTEGER", "BIGINT"),
    ("label", "INTEGER NOT NULL", "SMALLINT NOT NULL"),
    ("card_id", "TEXT", "TEXT"),
    ("terminal_id", "TEXT", "TEXT"),
    ("labelled_ms", "INTEGER", "BIGINT"),
    ("fraud_scenario", "TEXT", "TEXT"),
    ("written_ms", "INTEGER", "BIGINT"),
)
LABEL_ROW_FIELDS: tuple[str, ...] = tuple(name for name, _, _ in LABEL_COLUMNS if name != "written_ms")

# Messages the sink could not write (bad values the database refuses), kept with the reason and
# the source offset so the offset can move past them (docs/database.md).
DEAD_LETTER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("source_topic", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("source_partition", "INTEGER NOT NULL", "INTEGER NOT NULL"),
    ("source_offset", "INTEGER NOT NULL", "BIGINT NOT NULL"),
    ("reason", "TEXT", "TEXT"),
    ("payload_bytes", "INTEGER", "BIGINT"),
    ("payload_excerpt", "TEXT", "TEXT"),
    ("written_ms", "INTEGER", "BIGINT"),
)
DEAD_LETTER_FIELDS: tuple[str, ...] = tuple(
    name for name, _, _ in DEAD_LETTER_COLUMNS if name != "written_ms"
)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class DatabaseUnavailable(DatabaseError):
    """A failure that may pass (server down, refused login, locked file): the caller retries."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed `sink.url`: which engine, where, and how to name it without its password."""

    dialect: Dialect
    url: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def scrub(self, text: str) -> str:
        """A driver's message with this URL's password masked wherever it shows.

        libpq splits `user:p@ss@host` at the FIRST "@" and then echoes "ss@host" as the host it
        could not resolve, so the patterns of mask_secrets alone are not enough here.
        """
        text = mask_secrets(text)
        password = self.password
        if not password:
            return text
        for index, char in enumerate(password):
            if char == "@" and password[index + 1 :]:
                text = text.replace(password[index + 1 :] + "@", MASK + "@")
        return text.replace(password, MASK) if len(password) >= 4 else text

    def describe(self) -> str:
        """Human name for messages: engine, host/db or file, and the URL with its password masked."""
        if self.dialect == "sqlite":
            return f"SQLite database {self.path}"
        where = f"{self.host or 'localhost'}:{self.port or 5432}/{self.dbname or self.user or ''}"
        user = f" as user {self.user}" if self.user else ""
        return f"PostgreSQL {where}{user} ({mask_secrets(self.url)})"


def parse_url(url: str) -> DatabaseUrl:
    """Parse sqlite:///relative.db, sqlite:////abs/path.db or postgresql://user:pw@host:port/db."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(
            f"sink.url: {mask_secrets(url)!r} is not a URL (sqlite:///file.db or postgresql://...)"
        )
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"sink.url: {mask_secrets(url)!r}: expected sqlite:///relative.db or sqlite:////absolute.db"
            )
        path = unquote(rest[1:].split("?", 1)[0])
        return DatabaseUrl("sqlite", url, path=path)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        normalized = "postgresql://" + rest
        try:
            parts = urlsplit(normalized)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"sink.url: {mask_secrets(url)!r}: {exc}") from None
        return DatabaseUrl(
            "postgresql",
            normalized,
            host=parts.hostname,
            port=port,
            dbname=unquote(parts.path.lstrip("/")) or None,
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
    raise ConfigError(
        f"sink.url: unsupported scheme {scheme!r} in {mask_secrets(url)!r} (use sqlite:/// or postgresql://)"
    )


def check_table_name(name: str, dialect: Dialect, key: str) -> str:
    """A table name that is safe to quote into SQL: identifier, or schema.identifier on PostgreSQL."""
    parts = name.split(".")
    if len(parts) > (2 if dialect == "postgresql" else 1) or not all(_IDENTIFIER.match(p) for p in parts):
        allowed = "name or schema.name" if dialect == "postgresql" else "name"
        raise ConfigError(f"{key}: {name!r} is not a valid table {allowed} (letters, digits, _)")
    return name


def _quote(name: str) -> str:
    return ".".join(f'"{part}"' for part in name.split("."))


def _bare(name: str) -> str:
    return name.split(".")[-1]


@dataclass
class WriteResult:
    """What one batch did to the database."""

    inserted: int = 0
    duplicates: int = 0
    labels: int = 0


class Database:
    """A connection to the predictions database that reconnects after a failure."""

    dialect: Dialect
    placeholder = "?"

    def __init__(
        self,
        url: DatabaseUrl,
        table: str,
        labels_table: str,
        read_only: bool = False,
        dead_letter_table: str = "fraud_dead_letters",
    ) -> None:
        self.url = url
        self.table = check_table_name(table, url.dialect, "sink.table")
        self.labels_table = check_table_name(labels_table, url.dialect, "sink.labels_table")
        self.dead_letter_table = check_table_name(dead_letter_table, url.dialect, "sink.dead_letter_table")
        self.read_only = read_only
        self._connection: Any = None
        self._staged = False

    # -- connection management -------------------------------------------------------------------
    def connection(self) -> Any:
        """The open connection, connecting first if needed (DatabaseUnavailable on failure)."""
        if self._connection is None:
            self._connection = self._connect()
            self._staged = False
        return self._connection

    def close(self) -> None:
        """Close the connection, ignoring errors (it may already be broken)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> Any:
        raise NotImplementedError

    def _fail(self, exc: Exception, action: str) -> DatabaseError:
        """Translate a driver error; connection-level failures drop the connection and are retryable."""
        raise NotImplementedError

    # -- schema ----------------------------------------------------------------------------------
    def schema_sql(self) -> tuple[list[str], list[str]]:
        """CREATE statements for both tables, and for their indexes (all idempotent)."""
        type_index = 1 if self.dialect == "sqlite" else 2
        predictions = ",\n  ".join(f"{col[0]} {col[type_index]}" for col in PREDICTION_COLUMNS)
        labels = ",\n  ".join(f"{col[0]} {col[type_index]}" for col in LABEL_COLUMNS)
        dead_letters = ",\n  ".join(f"{col[0]} {col[type_index]}" for col in DEAD_LETTER_COLUMNS)
        base = _bare(self.table)
        tables = [
            f"CREATE TABLE IF NOT EXISTS {_quote(self.table)} (\n  {predictions}\n)",
            f"CREATE TABLE IF NOT EXISTS {_quote(self.labels_table)} (\n  {labels}\n)",
            f"CREATE TABLE IF NOT EXISTS {_quote(self.dead_letter_table)} (\n  {dead_letters},\n"
            "  PRIMARY KEY (source_topic, source_partition, source_offset)\n)",
        ]
        indexes = [
            f"CREATE INDEX IF NOT EXISTS {base}_event_time_idx ON {_quote(self.table)} (event_time_ms)"
        ]
        return tables, indexes

    def ensure_schema(self) -> None:
        """Create the tables if missing; refuse an existing table that lacks fraudkit's columns."""
        tables, indexes = self.schema_sql()
        self._execute_ddl(tables)
        for table, columns in (
            (self.table, PREDICTION_COLUMNS),
            (self.labels_table, LABEL_COLUMNS),
            (self.dead_letter_table, DEAD_LETTER_COLUMNS),
        ):
            existing = self.columns(table)
            missing = [name for name, _, _ in columns if name not in existing]
            if missing:
                raise DatabaseError(
                    f"table {table} in {self.url.describe()} exists without column(s) {', '.join(missing)}; "
                    "drop it or set sink.table to another name"
                )
        self._execute_ddl(indexes)

    def _execute_ddl(self, statements: list[str]) -> None:
        try:
            connection = self.connection()
            cursor = connection.cursor()
            for statement in statements:
                cursor.execute(statement)
            connection.commit()
        except DatabaseError:
            raise
        except Exception as exc:
            raise self._fail(exc, "create the schema in") from None

    def columns(self, table: str) -> set[str]:
        """Column names of a table (empty if the table does not exist)."""
        raise NotImplementedError

    def table_exists(self, table: str) -> bool:
        """True if the table exists."""
        return bool(self.columns(table))

    # -- writes ----------------------------------------------------------------------------------
    def write_batch(self, verdicts: Sequence[Sequence[Any]], labels: Sequence[Sequence[Any]]) -> WriteResult:
        """Write verdict rows (VERDICT_FIELDS order) and label rows (LABEL_ROW_FIELDS order), then commit.

        Verdicts: first one per transaction_id wins (re-delivery is a no-op) and picks up an already
        known label. Labels: the latest wins and is copied onto the prediction row.
        """
        received = len(verdicts)
        written_ms = int(time.time() * 1000)
        try:
            connection = self.connection()
            result = self._write(connection, _unique_first(verdicts), _unique_last(labels), written_ms)
            connection.commit()
            result.duplicates = received - result.inserted
            return result
        except DatabaseError:
            raise
        except Exception as exc:
            raise self._fail(exc, "write to") from None

    def _write(
        self, connection: Any, verdicts: list[Sequence[Any]], labels: list[Sequence[Any]], written_ms: int
    ) -> WriteResult:
        raise NotImplementedError

    def write_dead_letters(self, rows: Sequence[Sequence[Any]]) -> None:
        """Record messages that could not be written (DEAD_LETTER_FIELDS order); a re-delivery is a no-op."""
        if not rows:
            return
        written_ms = int(time.time() * 1000)
        p = self.placeholder
        columns = ", ".join(DEAD_LETTER_FIELDS)
        marks = ", ".join(p for _ in range(len(DEAD_LETTER_FIELDS) + 1))
        sql = (
            f"INSERT INTO {_quote(self.dead_letter_table)} ({columns}, written_ms) VALUES ({marks}) "
            "ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING"
        )
        try:
            connection = self.connection()
            cursor = connection.cursor()
            if self.dialect == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            cursor.executemany(sql, [(*row, written_ms) for row in rows])
            connection.commit()
        except DatabaseError:
            raise
        except Exception as exc:
            raise self._fail(exc, "write dead letters to") from None

    def _move_sql(self, stage_verdicts: str, stage_labels: str) -> tuple[str, str, str]:
        """INSERT new predictions (joined with known labels), upsert labels, copy labels onto rows."""
        p = self.placeholder
        verdict_cols = ", ".join(VERDICT_FIELDS)
        staged_cols = ", ".join(f"s.{name}" for name in VERDICT_FIELDS)
        label_cols = ", ".join(LABEL_ROW_FIELDS)
        where_true = " WHERE true" if self.dialect == "sqlite" else ""  # SQLite's INSERT..SELECT..ON CONFLICT
        insert_predictions = (
            f"INSERT INTO {_quote(self.table)} ({verdict_cols}, written_ms, label, fraud_scenario, labelled_ms) "
            f"SELECT {staged_cols}, {p}, l.label, l.fraud_scenario, l.labelled_ms FROM {stage_verdicts} s "
            f"LEFT JOIN {_quote(self.labels_table)} l ON l.transaction_id = s.transaction_id{where_true} "
            "ON CONFLICT (transaction_id) DO NOTHING"
        )
        updates = ", ".join(f"{name} = excluded.{name}" for name in LABEL_ROW_FIELDS[1:])
        upsert_labels = (
            f"INSERT INTO {_quote(self.labels_table)} ({label_cols}, written_ms) "
            f"SELECT {label_cols}, {p} FROM {stage_labels}{where_true} "
            f"ON CONFLICT (transaction_id) DO UPDATE SET {updates}, written_ms = excluded.written_ms"
        )
        label_predictions = (
            f"UPDATE {_quote(self.table)} AS p SET label = s.label, fraud_scenario = s.fraud_scenario, "
            f"labelled_ms = s.labelled_ms FROM {stage_labels} s WHERE p.transaction_id = s.transaction_id"
        )
        return insert_predictions, upsert_labels, label_predictions

    # -- reads -----------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query and return its rows."""
        try:
            cursor = self.connection().cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            self.connection().rollback()  # end the read transaction so the next query sees new rows
            return [tuple(row) for row in rows]
        except DatabaseError:
            raise
        except Exception as exc:
            raise self._fail(exc, "read from") from None

    def percentiles(self, expression: str, where: str, fractions: Sequence[float]) -> list[float | None]:
        """Nearest-rank percentiles of an SQL expression over fraud_predictions rows matching `where`."""
        rows = self.query(f"SELECT {expression} FROM {_quote(self.table)} WHERE {where} ORDER BY 1")
        values = [row[0] for row in rows]
        if not values:
            return [None for _ in fractions]
        return [
            float(values[min(len(values) - 1, max(0, int(f * len(values) + 0.5) - 1))]) for f in fractions
        ]

    def score_bin(self, bins: int) -> str:
        """SQL expression mapping score in [0, 1] to an integer bin 0..bins-1."""
        raise NotImplementedError


class SqliteDatabase(Database):
    """A SQLite file through the standard library (WAL mode so `report` reads while `sink` writes)."""

    dialect: Dialect = "sqlite"
    placeholder = "?"

    def _connect(self) -> Any:
        path = self.url.path or ""
        try:
            if self.read_only:
                if path != ":memory:" and not Path(path).is_file():
                    raise DatabaseError(f"no database at {path} (run `fraudkit sink` first, or set sink.url)")
                connection = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None
                )
            else:
                if path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                # Autocommit mode: write_batch opens its own BEGIN IMMEDIATE transaction.
                connection = sqlite3.connect(path, timeout=30, isolation_level=None)
                connection.execute("PRAGMA journal_mode=WAL")
            return connection
        except DatabaseError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseUnavailable(f"cannot open {self.url.describe()}: {exc}") from None

    def _fail(self, exc: Exception, action: str) -> DatabaseError:
        self.close()
        message = f"cannot {action} {self.url.describe()}: {exc}"
        if isinstance(exc, sqlite3.OperationalError):
            return DatabaseUnavailable(message)
        return DatabaseError(message)

    def columns(self, table: str) -> set[str]:
        rows = self.query(f"PRAGMA table_info({_quote(table)})")
        return {row[1] for row in rows}

    def _stage(self, connection: sqlite3.Connection) -> None:
        if self._staged:
            return
        verdict_cols = ", ".join(VERDICT_FIELDS)
        label_cols = ", ".join(LABEL_ROW_FIELDS)
        connection.execute(f"CREATE TEMP TABLE IF NOT EXISTS fraudkit_stage_verdicts ({verdict_cols})")
        connection.execute(f"CREATE TEMP TABLE IF NOT EXISTS fraudkit_stage_labels ({label_cols})")
        connection.commit()
        self._staged = True

    def _write(
        self, connection: Any, verdicts: list[Sequence[Any]], labels: list[Sequence[Any]], written_ms: int
    ) -> WriteResult:
        self._stage(connection)
        insert_predictions, upsert_labels, label_predictions = self._move_sql(
            "temp.fraudkit_stage_verdicts", "temp.fraudkit_stage_labels"
        )
        result = WriteResult()
        connection.execute("BEGIN IMMEDIATE")
        if verdicts:
            marks = ", ".join("?" for _ in VERDICT_FIELDS)
            connection.executemany(f"INSERT INTO temp.fraudkit_stage_verdicts VALUES ({marks})", verdicts)
            before = connection.total_changes
            connection.execute(insert_predictions, (written_ms,))
            result.inserted = connection.total_changes - before
            connection.execute("DELETE FROM temp.fraudkit_stage_verdicts")
        if labels:
            marks = ", ".join("?" for _ in LABEL_ROW_FIELDS)
            connection.executemany(f"INSERT INTO temp.fraudkit_stage_labels VALUES ({marks})", labels)
            connection.execute(upsert_labels, (written_ms,))
            connection.execute(label_predictions)
            connection.execute("DELETE FROM temp.fraudkit_stage_labels")
            result.labels = len(labels)
        return result

    def score_bin(self, bins: int) -> str:
        # CAST truncates towards zero in SQLite, which is the floor for scores >= 0.
        return f"MIN({bins - 1}, MAX(0, CAST(score * {bins} AS INTEGER)))"


class PostgresDatabase(Database):
    """PostgreSQL through psycopg 3: COPY into a temporary table, then one INSERT ... ON CONFLICT."""

    dialect: Dialect = "postgresql"
    placeholder = "%s"

    def _connect(self) -> Any:
        import psycopg

        try:
            connection = psycopg.connect(
                self.url.url, connect_timeout=5, application_name="fraudkit", autocommit=False
            )
            if self.read_only:
                connection.read_only = True
            return connection
        except psycopg.Error as exc:
            raise DatabaseUnavailable(
                f"cannot connect to {self.url.describe()}: {_pg_message(exc, self.url)}"
            ) from None

    def _fail(self, exc: Exception, action: str) -> DatabaseError:
        import psycopg

        message = f"cannot {action} {self.url.describe()}: {_pg_message(exc, self.url)}"
        connection = self._connection
        broken = connection is None or connection.closed or connection.broken
        if not broken:
            try:
                connection.rollback()
            except psycopg.Error:
                broken = True
        if broken or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            self.close()
            return DatabaseUnavailable(message)
        return DatabaseError(message)

    def columns(self, table: str) -> set[str]:
        schema, _, name = table.rpartition(".")
        rows = self.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "AND table_schema = COALESCE(NULLIF(%s, ''), current_schema())",
            (name, schema),
        )
        return {row[0] for row in rows}

    def _stage(self, connection: Any) -> None:
        if self._staged:
            return
        verdict_cols = ", ".join(
            f"{name} {_plain(pg)}" for name, _, pg in PREDICTION_COLUMNS if name in VERDICT_FIELDS
        )
        label_cols = ", ".join(
            f"{name} {_plain(pg)}" for name, _, pg in LABEL_COLUMNS if name in LABEL_ROW_FIELDS
        )
        with connection.cursor() as cursor:
            # ON COMMIT DELETE ROWS empties the stage with every commit, so a retried batch starts clean.
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS fraudkit_stage_verdicts ({verdict_cols}) ON COMMIT DELETE ROWS"
            )
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS fraudkit_stage_labels ({label_cols}) ON COMMIT DELETE ROWS"
            )
        connection.commit()
        self._staged = True

    def _write(
        self, connection: Any, verdicts: list[Sequence[Any]], labels: list[Sequence[Any]], written_ms: int
    ) -> WriteResult:
        self._stage(connection)
        insert_predictions, upsert_labels, label_predictions = self._move_sql(
            "fraudkit_stage_verdicts", "fraudkit_stage_labels"
        )
        result = WriteResult()
        with connection.cursor() as cursor:
            if verdicts:
                _copy_rows(cursor, "fraudkit_stage_verdicts", VERDICT_FIELDS, verdicts)
                cursor.execute(insert_predictions, (written_ms,))
                result.inserted = max(cursor.rowcount, 0)
            if labels:
                _copy_rows(cursor, "fraudkit_stage_labels", LABEL_ROW_FIELDS, labels)
                cursor.execute(upsert_labels, (written_ms,))
                cursor.execute(label_predictions)
                result.labels = len(labels)
        return result

    def percentiles(self, expression: str, where: str, fractions: Sequence[float]) -> list[float | None]:
        # Let the server sort: a big table would not fit through the wire quickly.
        rows = self.query(
            f"SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY {expression}) "
            f"FROM {_quote(self.table)} WHERE {where}",
            (list(fractions),),
        )
        values = rows[0][0] if rows else None
        if not values:
            return [None for _ in fractions]
        return [None if v is None else float(v) for v in values]

    def score_bin(self, bins: int) -> str:
        return f"LEAST({bins - 1}, GREATEST(0, FLOOR(score * {bins})::int))"


def _copy_rows(cursor: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _plain(sql_type: str) -> str:
    return sql_type.replace(" NOT NULL", "").replace(" PRIMARY KEY", "")


def _pg_message(exc: Exception, url: DatabaseUrl) -> str:
    text = " ".join(str(exc).split())
    return url.scrub(text) or type(exc).__name__


def _unique_first(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    seen: set[Any] = set()
    unique = []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            unique.append(row)
    return unique


def _unique_last(rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    return list({row[0]: row for row in rows}.values())


def open_database(
    url: str,
    table: str,
    labels_table: str,
    read_only: bool = False,
    dead_letter_table: str = "fraud_dead_letters",
) -> Database:
    """A Database for sink.url (not yet connected: the first use connects)."""
    parsed = parse_url(url)
    cls = SqliteDatabase if parsed.dialect == "sqlite" else PostgresDatabase
    return cls(parsed, table, labels_table, read_only=read_only, dead_letter_table=dead_letter_table)


def quote_table(name: str) -> str:
    """The quoted form of a validated table name, for report queries."""
    return _quote(name)
