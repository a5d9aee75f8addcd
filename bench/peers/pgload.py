"""Load careledger's Parquet exports into PostgreSQL, and bind report parameters.

load(conn, export_dir) recreates the tables from postgres/schema.sql, streams
every <table>.parquet in export_dir into its table with COPY (DuckDB writes
each file to CSV in a temporary directory first), then runs
postgres/indexes.sql. bind(sql, values) substitutes typed literals for the
`$name` placeholders of a report, for DuckDB and PostgreSQL alike.
"""

from __future__ import annotations

import os
import re
import tempfile
import time

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_SQL = os.path.join(HERE, "postgres", "schema.sql")
INDEXES_SQL = os.path.join(HERE, "postgres", "indexes.sql")

# The relations the 12 named reports read, as exported from careledger.
TABLES = (
    "women", "life_events", "group_flags", "services", "registrations", "batches",
    "people", "status_episodes", "residence", "ledger_runs", "group_episodes",
    "regions", "codes", "region_levels", "calendar_months",
)

_CHUNK = 1 << 20


def _qident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qlit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _finish(conn) -> None:
    if not conn.autocommit:
        conn.commit()


def load(conn, export_dir: str) -> dict:
    """(Re)create the schema, COPY every exported table in, build the indexes.

    Returns {"load_s": seconds for schema + CSV conversion + COPY,
             "index_s": seconds for indexes.sql (indexes and ANALYZE),
             "rows": {table: rows loaded}}.
    """
    with open(SCHEMA_SQL, encoding="utf-8") as f:
        schema = f.read()
    with open(INDEXES_SQL, encoding="utf-8") as f:
        indexes = f.read()

    t0 = time.perf_counter()
    conn.execute(schema)
    _finish(conn)
    rows = {}
    duck = duckdb.connect()
    duck.execute("SET TimeZone = 'UTC'")
    try:
        with tempfile.TemporaryDirectory(prefix="pgload-") as tmp:
            for table in TABLES:
                parquet = os.path.join(export_dir, table + ".parquet")
                if not os.path.exists(parquet):
                    raise FileNotFoundError(parquet)
                csv_path = os.path.join(tmp, table + ".csv")
                src = f"read_parquet({_qlit(parquet)})"
                columns = [r[0] for r in duck.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()]
                duck.execute(f"COPY (SELECT * FROM {src}) TO {_qlit(csv_path)} (FORMAT csv, HEADER true)")
                collist = ", ".join(_qident(c) for c in columns)
                with conn.cursor() as cur:
                    with cur.copy(f"COPY {_qident(table)} ({collist}) FROM STDIN (FORMAT csv, HEADER true)") as copy:
                        with open(csv_path, "rb") as f:
                            while chunk := f.read(_CHUNK):
                                copy.write(chunk)
                    rows[table] = cur.rowcount
                os.remove(csv_path)
                _finish(conn)
    finally:
        duck.close()
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    conn.execute(indexes)
    _finish(conn)
    index_s = time.perf_counter() - t1
    return {"load_s": load_s, "index_s": index_s, "rows": rows}


_LITERAL = {
    "date": lambda v: "DATE " + _qlit(v),
    "text": _qlit,
    "timestamp": lambda v: "TIMESTAMPTZ " + _qlit(v),
}


def bind(sql: str, values: dict[str, tuple[str, str]]) -> str:
    """Replace each `$name` in sql with a typed literal.

    values maps name -> (type, value), type in {date, text, timestamp}:
    date -> DATE '2024-12-31', text -> 'county' (quotes doubled),
    timestamp -> TIMESTAMPTZ '2025-01-10T00:00:00Z'. Longest names go first,
    and a name only matches when not followed by another identifier character,
    so `$to` never clobbers `$top`.
    """
    for name in sorted(values, key=len, reverse=True):
        typ, value = values[name]
        try:
            literal = _LITERAL[typ](str(value))
        except KeyError:
            raise ValueError(f"parameter {name}: unknown type {typ!r}") from None
        sql = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m: literal, sql)
    return sql
