"""Check that the DuckDB and PostgreSQL peers of careledger's named reports
give careledger's answers.

    python check_equal.py --store DIR --export DIR --pg-dsn DSN [--bin PATH] [--skip-load] [--param NAME=VALUE ...]

For each report with its default parameters (from the `-- param:` header of
queries/<report>.sql): careledger's answer (`careledger report --store`),
DuckDB's (views over <export>/<table>.parquet) and PostgreSQL's (tables loaded
by pgload.load unless --skip-load), normalised and compared row by row in order.
Exit status 0 when every report is equal for both peers.

normalise(rows) and first_difference(a, b) are importable by the driver.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import math
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pgload  # noqa: E402

REPORTS = (
    "balance", "breadth", "coverage_by_measure", "entries", "exits", "group_coverage",
    "priority_gap_counts", "priority_gaps", "registration_discrepancies", "source_health",
    "stock", "turnover_and_returns",
)

# Columns careledger computes with an approximate aggregate, compared within a relative
# tolerance: none since source health's 90th percentile is exact (`percentile_cont`; it was
# a t-digest estimate, `approx_percentile_cont`, compared within 2%).
APPROX: dict[str, dict[str, float]] = {}

DEFAULT_BIN = os.path.expanduser("~/.cache/careledger/target/release/careledger")
DEFAULT_QUERIES = os.path.normpath(os.path.join(HERE, "..", "..", "queries"))

_TS = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)$")


def _norm_ts(t: dt.datetime) -> str:
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _norm_value(v):
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, decimal.Decimal):
        v = float(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        r = round(v, 4)
        return 0.0 if r == 0 else r
    if isinstance(v, dt.datetime):
        return _norm_ts(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, str):
        if _TS.match(v):
            try:
                return _norm_ts(dt.datetime.fromisoformat(v.replace("Z", "+00:00")))
            except ValueError:
                return v
        return v
    return v


def normalise(rows) -> list[tuple]:
    """Rows as tuples in the given column order: floats/Decimals -> float rounded
    to 4 decimals, dates -> ISO strings, timestamps -> UTC ISO strings with Z,
    NULL -> None."""
    return [tuple(_norm_value(v) for v in row) for row in rows]


def _close(x, y, rel) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return x == y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return abs(x - y) <= rel * max(abs(x), abs(y), 1e-12)
    return x == y


def first_difference(a, b, columns=None, approx=None) -> str | None:
    """None when the normalised answers a and b are equal (same rows, same
    order), else a description of the first difference. approx maps a column
    name (with columns given) or index to a relative tolerance."""
    approx = approx or {}
    tol = {}
    for k, rel in approx.items():
        if isinstance(k, int):
            tol[k] = rel
        elif columns is not None and k in columns:
            tol[columns.index(k)] = rel
    for i, (ra, rb) in enumerate(zip(a, b)):
        if len(ra) != len(rb):
            return f"row {i}: {len(ra)} columns vs {len(rb)}"
        for j, (x, y) in enumerate(zip(ra, rb)):
            if isinstance(x, bool) != isinstance(y, bool):
                same = False  # True == 1 in Python; a boolean never equals a count
            elif j in tol:
                same = _close(x, y, tol[j])
            else:
                same = x == y
            if not same:
                col = columns[j] if columns and j < len(columns) else f"#{j}"
                return f"row {i} column {col}: {x!r} vs {y!r} (rows {ra!r} vs {rb!r})"
    if len(a) != len(b):
        extra, which = (a[len(b)], "first") if len(a) > len(b) else (b[len(a)], "second")
        return f"{len(a)} rows vs {len(b)}; first extra row in the {which}: {extra!r}"
    return None


def default_params(queries_dir: str, report: str) -> dict[str, tuple[str, str]]:
    """name -> (type, default) from the `-- param: NAME TYPE DEFAULT ...` header."""
    params = {}
    with open(os.path.join(queries_dir, report + ".sql"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"--\s*param:\s*(\S+)\s+(\S+)\s+('(?:[^']|'')*'|\S+)", line)
            if m:
                name, typ, default = m.groups()
                if default.startswith("'"):
                    default = default[1:-1].replace("''", "'")
                params[name] = (typ, default)
    return params


def careledger_answer(binary, store, report, params):
    cmd = [binary, "report", report, "--store", store, "--format", "json"]
    for name, (_typ, value) in params.items():
        cmd += ["--param", f"{name}={value}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    doc = json.loads(out)
    return [c["name"] for c in doc["columns"]], doc["rows"]


# The relations careledger stores (Delta tables in its store) and where: the derived ledger's
# current records and status tables, and the gateway's `batches`. The rest of pgload.TABLES
# are reference tables compiled into careledger (regions, codes, …): read from the export.
STORED = {
    "women": "derived/current_women", "life_events": "derived/current_life_events",
    "group_flags": "derived/current_group_flags", "services": "derived/current_services",
    "registrations": "derived/current_registrations", "people": "derived/people",
    "status_episodes": "derived/status_episodes", "residence": "derived/residence",
    "ledger_runs": "derived/ledger_runs",
}


def _parquet_list(files):
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def _files(table):
    return [u.removeprefix("file://") for u in table.file_uris()]


def duckdb_connection(export_dir, store=None):
    """DuckDB with a view per relation the reports read. With `store`, the relations
    careledger stores are read from the store's own Parquet files (the active files of each
    Delta table's latest version), with the rule careledger's views apply to them: a derived
    row is live when its cycle is complete (`gen` between the floor and the cycle of the
    deriver's watermark, in `derived/superseded`'s transactions), no later complete cycle
    superseded its woman, and it is current (`known_to` NULL). So DuckDB reads the same
    stored data careledger reads and pays for the same dead rows. Without `store`, every
    relation is read from `export_dir` (careledger's answers to `SELECT *`)."""
    import duckdb
    con = duckdb.connect()
    stored = {}

    def columns(name):
        """The columns careledger's SQL shows for `name` (those of its export), in order."""
        path = os.path.join(export_dir, name + ".parquet").replace("'", "''")
        return [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()]

    if store is not None:
        from deltalake import DeltaTable
        app = "careledger-deriver/"
        sup = DeltaTable(os.path.join(store, "derived", "superseded"))
        cycle = sup.transaction_version(app + "cycle") or 0
        floor = sup.transaction_version(app + "floor") or 0
        sup_files = _files(sup)
        if sup_files:
            con.execute(
                "CREATE VIEW cl_superseded AS SELECT person_key AS sk_, max(gen) AS sg_ "
                f"FROM read_parquet({_parquet_list(sup_files)}) WHERE gen > {floor} AND gen <= {cycle} "
                "GROUP BY person_key")
        for name, path in STORED.items():
            files = _files(DeltaTable(os.path.join(store, path)))
            sel = ", ".join(f't."{c}"' for c in columns(name))
            where = f"t.gen >= {floor} AND t.gen <= {cycle} AND t.known_to IS NULL"
            if sup_files:
                body = (f"FROM cl_superseded s RIGHT JOIN read_parquet({_parquet_list(files)}) t "
                        f"ON s.sk_ = t.person_key WHERE {where} AND (s.sg_ IS NULL OR s.sg_ <= t.gen)")
            else:
                body = f"FROM read_parquet({_parquet_list(files)}) t WHERE {where}"
            stored[name] = f"SELECT {sel} {body}"
        stored["group_episodes"] = (
            "SELECT person_key, \"group\" AS group_code, valid_from, "
            "CAST(valid_to + INTERVAL 1 DAY AS DATE) AS valid_until, detail, source, person_id "
            "FROM group_flags WHERE person_key IS NOT NULL")
        batches = _files(DeltaTable(os.path.join(store, "batches")))
        sel = ", ".join(f'"{c}"' for c in columns("batches"))
        stored["batches"] = f"SELECT {sel} FROM read_parquet({_parquet_list(batches)})"
    for t in pgload.TABLES:
        if t in stored:
            continue
        path = os.path.join(export_dir, t + ".parquet").replace("'", "''")
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")
    for t in ("women", "life_events", "group_flags", "services", "registrations", "people",
              "status_episodes", "residence", "ledger_runs", "group_episodes", "batches"):
        if t in stored:
            con.execute(f"CREATE VIEW {t} AS {stored[t]}")
    return con


def duckdb_answer(con, sql):
    cur = con.execute(sql)
    return [d[0] for d in cur.description], cur.fetchall()


def pg_answer(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return [d.name for d in cur.description], cur.fetchall()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="careledger store directory (read-only)")
    ap.add_argument("--export", required=True, help="directory of <table>.parquet exports")
    ap.add_argument("--pg-dsn", required=True, help="psycopg DSN of a scratch PostgreSQL database")
    ap.add_argument("--bin", default=DEFAULT_BIN, help="careledger binary")
    ap.add_argument("--queries", default=DEFAULT_QUERIES, help="careledger's queries/ (for parameter defaults)")
    ap.add_argument("--skip-load", action="store_true", help="the PostgreSQL tables are already loaded")
    ap.add_argument("--only", nargs="*", help="only these reports")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="override a default parameter in every report that has it (repeatable)")
    args = ap.parse_args(argv)

    import psycopg
    pg = psycopg.connect(args.pg_dsn, autocommit=True)
    if not args.skip_load:
        t = pgload.load(pg, args.export)
        print(f"postgres load: load_s={t['load_s']:.2f} index_s={t['index_s']:.2f}")
    duck = duckdb_connection(args.export)

    ok = True
    print(f"{'report':28} {'rows':>6}  {'duckdb':7} {'postgres':8}")
    for report in args.only or REPORTS:
        params = default_params(args.queries, report)
        for override in args.param:
            name, _, value = override.partition("=")
            if name in params:
                params[name] = (params[name][0], value)
        cols, ref = careledger_answer(args.bin, args.store, report, params)
        ref = normalise(ref)
        approx = APPROX.get(report)
        results, notes = [], []
        for peer, run in (("duckdb", lambda s: duckdb_answer(duck, s)),
                          ("postgres", lambda s: pg_answer(pg, s))):
            with open(os.path.join(HERE, peer, report + ".sql"), encoding="utf-8") as f:
                sql = pgload.bind(f.read(), params)
            try:
                pcols, rows = run(sql)
                diff = None if pcols == cols else f"columns {pcols} vs careledger's {cols}"
                diff = diff or first_difference(ref, normalise(rows), cols, approx)
            except Exception as e:  # report and go on
                diff = f"error: {type(e).__name__}: {e}".strip()
            results.append("yes" if diff is None else "NO")
            if diff is not None:
                ok = False
                notes.append(f"    {peer}: careledger vs {peer}: {diff}")
        note = f"  ({', '.join(approx)} within {max(approx.values()):.0%}: approximate in careledger)" if approx else ""
        print(f"{report:28} {len(ref):>6}  {results[0]:7} {results[1]:8}{note}")
        for n in notes:
            print(n)
    pg.close()
    duck.close()
    print("all equal" if ok else "DIFFERENCES FOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
