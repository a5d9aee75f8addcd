#!/usr/bin/env python3
"""careledger beside DuckDB and PostgreSQL, on the same simulated ledger, on this machine.

Run through `bench/peers/run` (it installs the peers and builds careledger in release first):

    bench/peers/run --women 100000 1000000

For each scale it:
  1. simulates the departments' rows (`careledger simulate`, NDJSON per source and table);
  2. ingest: pushes every row over HTTP in 10k-row NDJSON batches at 1, 4 and 16 concurrent
     senders, each run on a fresh store, to a durable acknowledgement; then 100-row batches at a
     steady rate (p50/p99 ack). Beside it: PostgreSQL `COPY` of the same rows in 10k-row
     transactions at 1, 4 and 16 connections and 100-row transactions at the same steady rate,
     and DuckDB converting the same NDJSON to Parquet;
  3. reports: every named report (but `revisions`), cold (first run in a fresh process) and warm
     (median of the next runs), in careledger over HTTP, in DuckDB over the store's own Parquet
     files (the Delta tables careledger stores, with its live-row rule; reference tables from an
     export), and in PostgreSQL over Parquet exports of the same relations, loaded with a DBA's
     indexes; the three answers are compared.
Results go to <work>/results-<women>.json; `--render` turns all of them into BENCHMARKS.md.

Loopback only. Standard library plus duckdb, deltalake, pyarrow and psycopg (the run script's venv).
"""

import argparse
import datetime
import glob
import http.client
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import duckdb  # noqa: E402
import psycopg  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.ipc  # noqa: E402,F401
import pyarrow.parquet as pq  # noqa: E402

import check_equal  # noqa: E402
import pgload  # noqa: E402
import plan_profile  # noqa: E402

# The relations the reports read; exported from careledger for the peers (pgload loads them).
EXPORTS = pgload.TABLES
PG_TIMEOUT_S = 180
SKIPPED_REPORTS = {"revisions": "runs stock and coverage at two knowledge instants inside careledger (transaction-time filters over the stored derived ledger); the peers get no transaction-time history of the derived tables"}


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


def report_specs():
    """Named reports (but the skipped) and their parameters (type, default), from queries/*.sql."""
    queries = os.path.join(REPO, "queries")
    names = sorted(os.path.basename(p).removesuffix(".sql") for p in glob.glob(os.path.join(queries, "*.sql")))
    return {n: check_equal.default_params(queries, n) for n in names if n not in SKIPPED_REPORTS}


# ---------------------------------------------------------------------------------------------
# careledger server


class Server:
    def __init__(self, binary, store, logpath, tokens=None, extra=()):
        self.log = open(logpath, "a")
        self.proc = subprocess.Popen(
            [binary, "serve", "--store", store, "--listen", "127.0.0.1:0", "--max-body-mib", "64",
             "--request-timeout-s", "600", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("careledger listening on "):
            raise SystemExit(f"server did not start: {line!r}; see {logpath}")
        self.url = line.removeprefix("careledger listening on ")
        hostport = self.url.removeprefix("http://")
        self.host, self.port = hostport.rsplit(":", 1)[0], int(hostport.rsplit(":", 1)[1])
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        if tokens is None:
            tokens = {}
            with open(os.path.join(store, "tokens-initial.txt"), encoding="utf-8") as f:
                for row in f:
                    if not row.startswith("#"):
                        name, _, tok = row.rstrip("\n").split("\t")
                        tokens[name] = tok
        self.tokens = tokens
        self.peak_rss_kib = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()
        self.derive_wait_s = self.wait_derived()
        if self.derive_wait_s > 1:
            log(f"  (the server's deriver caught up with the store in {self.derive_wait_s:.1f} s)")

    def wait_derived(self):
        """Waits until the derived ledger reflects every commit of the store (a server
        derives what it finds underived when it starts); the seconds it took."""
        t0 = time.perf_counter()
        while True:
            conn = self.conn()
            conn.request("POST", "/v1/sql?wait_for=latest", json.dumps({"sql": "SELECT 1 AS ok"}),
                         {"Authorization": f"Bearer {self.tokens['admin']}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if resp.status == 200:
                return time.perf_counter() - t0
            if resp.status != 503:
                raise SystemExit(f"waiting for the deriver: {resp.status} {data[:300]!r}")

    def _sample(self):
        while not self._stop.is_set():
            try:
                with open(f"/proc/{self.proc.pid}/status") as f:
                    for row in f:
                        if row.startswith("VmRSS:"):
                            self.peak_rss_kib = max(self.peak_rss_kib, int(row.split()[1]))
            except OSError:
                pass
            time.sleep(0.2)

    def conn(self, timeout=900):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def stop(self):
        self._stop.set()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def post_batch(conn, table, token, body, key):
    """One NDJSON batch; retried on 429/503 (Retry-After) and on a dropped connection."""
    for attempt in range(20):
        try:
            conn.request("POST", f"/v1/ingest/{table}?atomic=false", body, {
                "Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson",
                "Idempotency-Key": key,
            })
            resp = conn.getresponse()
            data = resp.read()
        except (ConnectionError, http.client.HTTPException, TimeoutError):
            conn.close()
            time.sleep(0.2 * (attempt + 1))
            continue
        if resp.status in (429, 503) or (resp.status == 409 and b"in progress" in data):
            time.sleep(float(resp.getheader("Retry-After") or 0.2))
            continue
        return resp.status, data
    raise RuntimeError(f"batch {key}: no answer after 20 attempts")


# ---------------------------------------------------------------------------------------------
# data


def plan_batches(sim, rows_per_batch, tables=None):
    """[(source, table, path, offset, length, rows)] over every NDJSON file, in batches."""
    out = []
    for source in sorted(os.listdir(sim)):
        for name in sorted(os.listdir(os.path.join(sim, source))):
            table = name.removesuffix(".ndjson")
            if tables and table not in tables:
                continue
            path = os.path.join(sim, source, name)
            start = pos = rows = 0
            with open(path, "rb") as f:
                for line in f:
                    pos += len(line)
                    if line.strip():
                        rows += 1
                    if rows == rows_per_batch:
                        out.append((source, table, path, start, pos - start, rows))
                        start, rows = pos, 0
            if rows:
                out.append((source, table, path, start, pos - start, rows))
    return out


def read_span(fds, path, offset, length):
    fd = fds.get(path)
    if fd is None:
        fd = fds[path] = os.open(path, os.O_RDONLY)
    return os.pread(fd, length, offset)


# ---------------------------------------------------------------------------------------------
# ingest: careledger


def careledger_ingest(binary, work, batches, senders, label):
    store = os.path.join(work, f"store-{label}")
    shutil.rmtree(store, ignore_errors=True)
    server = Server(binary, store, os.path.join(work, f"server-{label}.log"))
    order = list(range(len(batches)))
    random.Random(7).shuffle(order)
    feed = iter(order)
    lock = threading.Lock()
    stats = {"accepted": 0, "rejected_rows": 0, "bytes": 0, "failed": 0, "lat": [], "statuses": {},
             "done": []}

    def worker():
        conn, fds = server.conn(), {}
        while True:
            with lock:
                i = next(feed, None)
            if i is None:
                break
            source, table, path, off, length, _rows = batches[i]
            body = read_span(fds, path, off, length)
            t0 = time.perf_counter()
            status, data = post_batch(conn, table, server.tokens[source], body, f"{label}-{i}")
            lat = time.perf_counter() - t0
            with lock:
                stats["lat"].append(lat)
                stats["done"].append((time.perf_counter(), _rows))
                stats["bytes"] += len(body)
                stats["statuses"][status] = stats["statuses"].get(status, 0) + 1
                if 200 <= status < 300:
                    r = json.loads(data)
                    stats["accepted"] += r.get("rows_accepted", 0)
                    stats["rejected_rows"] += r.get("rows_rejected", 0)
                else:
                    stats["failed"] += 1
                    if stats["failed"] <= 3:
                        log(f"  batch {i} -> {status}: {data[:300]!r}")
        for fd in fds.values():
            os.close(fd)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    peak_load_kib = server.peak_rss_kib
    server.peak_rss_kib = 0  # from here on, the peak after the load
    # The Parquet files right after the last acknowledgement; then the server runs on until
    # its deriver reflects every commit and background compaction has brought every pushed
    # table to at most COMPACT_MAX_FILES active files (or SETTLE_LIMIT_S passed).
    files, active = table_files(store)
    t1 = time.perf_counter()
    server.wait_derived()
    derived_s = time.perf_counter() - t1
    while True:
        _, settled = table_files(store)
        pushed = {t: n for t, n in settled.items() if "/" not in t}
        if all(n <= COMPACT_MAX_FILES for n in pushed.values()) or time.perf_counter() - t1 > SETTLE_LIMIT_S:
            break
        time.sleep(1)
    settle_s = time.perf_counter() - t1
    server.stop()
    rows = stats["accepted"] + stats["rejected_rows"]
    # The rate of the first and of the last tenth of the batches (by acknowledgement time):
    # a commit that costs more as the table grows shows as a last tenth slower than the first.
    done = sorted(stats["done"])
    tenth = max(1, len(done) // 10)

    def rate(part, since):
        return sum(r for _, r in part) / max(part[-1][0] - since, 1e-9)

    first_rate = rate(done[:tenth], t0) if done else 0.0
    last_rate = rate(done[-tenth:], done[-tenth - 1][0]) if len(done) > tenth else first_rate
    return {
        "senders": senders, "batches": len(batches), "rows_sent": rows,
        "rows_accepted": stats["accepted"], "rows_rejected": stats["rejected_rows"],
        "failed_batches": stats["failed"], "statuses": {str(k): v for k, v in stats["statuses"].items()},
        "seconds": wall, "rows_per_s": rows / wall, "mb_per_s": stats["bytes"] / wall / 1e6,
        "ack_p50_ms": pct(stats["lat"], 50) * 1000, "ack_p99_ms": pct(stats["lat"], 99) * 1000,
        "peak_rss_mib": peak_load_kib / 1024, "peak_rss_after_mib": server.peak_rss_kib / 1024,
        "store": store,
        "first_tenth_rows_per_s": first_rate, "last_tenth_rows_per_s": last_rate,
        "parquet_files": files, "active_files": active,
        "derived_after_s": derived_s, "settle_s": settle_s, "active_files_settled": settled,
    }


# Background compaction's bound (the server's --compact-max-files default), and how long the
# ingest runs wait after the load for the server to reach it.
COMPACT_MAX_FILES = 64
SETTLE_LIMIT_S = 180


def table_files(store):
    """Parquet files per table directory on disk (files a compaction replaced stay until
    vacuum), and the active files of each table's latest version."""
    files = {}
    for root, _dirs, names in os.walk(store):
        if "_delta_log" in root:
            continue
        n = sum(1 for f in names if f.endswith(".parquet"))
        if n:
            files[os.path.relpath(root, store)] = n
    active = {}
    try:
        from deltalake import DeltaTable
        for t in files:
            try:
                active[t] = len(DeltaTable(os.path.join(store, t)).file_uris())
            except Exception:  # not a table root (a partition directory)
                pass
    except ImportError:
        pass
    return files, active


def steady(send, count, rate, workers=16):
    """Sends `count` items at `rate` per second (open loop); returns latencies and lateness."""
    lat, late = [], []
    lock = threading.Lock()
    feed = iter(range(count))
    start = time.perf_counter() + 0.2

    def worker():
        ctx = {}
        while True:
            with lock:
                i = next(feed, None)
            if i is None:
                break
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            t0 = time.perf_counter()
            send(ctx, i)
            with lock:
                lat.append(time.perf_counter() - t0)
                late.append(max(0.0, t0 - due))
        if "close" in ctx:
            ctx["close"]()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, late


def careledger_small(binary, work, small, rate, seconds):
    store = os.path.join(work, "store-small")
    shutil.rmtree(store, ignore_errors=True)
    server = Server(binary, store, os.path.join(work, "server-small.log"))
    count = min(len(small), int(rate * seconds))
    failed = []

    def send(ctx, i):
        if "conn" not in ctx:
            ctx["conn"], ctx["fds"] = server.conn(), {}
            ctx["close"] = lambda: [os.close(fd) for fd in ctx["fds"].values()]
        source, table, path, off, length, _ = small[i]
        status, data = post_batch(ctx["conn"], table, server.tokens[source], read_span(ctx["fds"], path, off, length), f"small-{i}")
        if not 200 <= status < 300:
            failed.append((status, data[:200]))

    lat, late = steady(send, count, rate)
    server.stop()
    shutil.rmtree(store, ignore_errors=True)
    return {"batches": count, "rows_per_batch": small[0][5], "rate_per_s": rate, "failed": len(failed),
            "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000, "max_ms": max(lat) * 1000,
            "late_p99_ms": pct(late, 99) * 1000}


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    """A throwaway cluster on loopback, tuned as a DBA would for a 2-core, 24 GiB machine."""

    SETTINGS = {
        "shared_buffers": "4GB", "effective_cache_size": "12GB", "work_mem": "256MB",
        "maintenance_work_mem": "1GB", "max_wal_size": "8GB", "max_parallel_workers_per_gather": "2",
        "random_page_cost": "1.1", "fsync": "on", "synchronous_commit": "on", "jit": "off",
    }

    def __init__(self, root, port):
        self.bindir = self._bindir()
        self.data = os.path.join(root, "pgdata")
        self.port = port
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            # A cluster left running by an interrupted run.
            subprocess.run(self.as_user + [os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        if self.as_user:
            shutil.chown(root, "postgres")
            os.chmod(os.path.dirname(root), 0o755)
        self._run("initdb", "-D", self.data, "-U", "bench", "--auth=trust", "-E", "UTF8", "--locale=C")
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{root}'\n")
            for k, v in self.SETTINGS.items():
                f.write(f"{k} = '{v}'\n")
        self.start()
        self.dsn = f"host=127.0.0.1 port={port} user=bench dbname=postgres"
        with psycopg.connect(self.dsn) as c:
            self.version = c.execute("SHOW server_version").fetchone()[0]

    @staticmethod
    def _bindir():
        for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
            if os.path.exists(os.path.join(d, "pg_ctl")):
                return d
        found = shutil.which("pg_ctl")
        if found:
            return os.path.dirname(os.path.realpath(found))
        raise SystemExit("no PostgreSQL: run bench/peers/run, which installs it")

    def _run(self, prog, *args):
        subprocess.run(self.as_user + [os.path.join(self.bindir, prog), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.data, "log.txt"), "-w", "start")

    def stop(self):
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def restart(self):
        self.stop()
        self.start()

    def connect(self):
        return psycopg.connect(self.dsn, autocommit=True)


PG_TYPES = {"VARCHAR": "text", "BIGINT": "bigint", "INTEGER": "integer", "DOUBLE": "double precision",
            "DATE": "date", "BOOLEAN": "boolean", "TIMESTAMP": "timestamp", "TIMESTAMP WITH TIME ZONE": "timestamptz"}


def ndjson_to_csv(sim, out):
    """One CSV per table of the simulated rows, for PostgreSQL's COPY (preparation, untimed)."""
    con = duckdb.connect()
    tables = {}
    for table in sorted({n.removesuffix(".ndjson") for s in os.listdir(sim) for n in os.listdir(os.path.join(sim, s))}):
        files = sorted(glob.glob(os.path.join(sim, "*", f"{table}.ndjson")))
        # The sender's token names the source in careledger; here it is a column of the row.
        rel = (f"(SELECT regexp_extract(filename, '/([^/]+)/[^/]+[.]ndjson$', 1) AS source, * EXCLUDE (filename) "
               f"FROM read_json({files!r}, format='newline_delimited', union_by_name=true, sample_size=-1, filename=true))")
        cols = con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()
        path = os.path.join(out, f"{table}.csv")
        con.execute(f"COPY (SELECT * FROM {rel}) TO '{path}' (FORMAT csv, HEADER false)")
        tables[table] = {"path": path, "columns": [(c[0], PG_TYPES.get(c[1], "text")) for c in cols]}
    con.close()
    return tables


def pg_chunks(path, rows_per_chunk):
    chunks, buf, n = [], [], 0
    with open(path, "rb") as f:
        for line in f:
            buf.append(line)
            n += 1
            if n == rows_per_chunk:
                chunks.append(b"".join(buf))
                buf, n = [], 0
    if buf:
        chunks.append(b"".join(buf))
    return chunks


def pg_create_raw(pg, tables):
    with pg.connect() as c:
        for table, spec in tables.items():
            cols = ", ".join(f'"{n}" {t}' for n, t in spec["columns"])
            c.execute(f"DROP TABLE IF EXISTS raw_{table}")
            # No key: careledger keeps every pushed row too (versions are picked at query time).
            c.execute(f"CREATE TABLE raw_{table} ({cols})")


def pg_copy_run(pg, tables, chunks, connections):
    pg_create_raw(pg, tables)
    feed = iter(range(len(chunks)))
    lock = threading.Lock()
    lat, total = [], {"bytes": 0, "rows": 0}

    def worker():
        with pg.connect() as c:
            while True:
                with lock:
                    i = next(feed, None)
                if i is None:
                    return
                table, data, rows = chunks[i]
                t0 = time.perf_counter()
                with c.transaction():
                    with c.cursor().copy(f"COPY raw_{table} FROM STDIN (FORMAT csv)") as cp:
                        cp.write(data)
                with lock:
                    lat.append(time.perf_counter() - t0)
                    total["bytes"] += len(data)
                    total["rows"] += rows

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"connections": connections, "rows": total["rows"], "seconds": wall,
            "rows_per_s": total["rows"] / wall, "mb_per_s": total["bytes"] / wall / 1e6,
            "ack_p50_ms": pct(lat, 50) * 1000, "ack_p99_ms": pct(lat, 99) * 1000}


def pg_small(pg, tables, rate, seconds):
    pg_create_raw(pg, tables)
    services = pg_chunks(tables["services"]["path"], 100)
    count = min(len(services), int(rate * seconds))

    def send(ctx, i):
        if "c" not in ctx:
            ctx["c"] = pg.connect()
            ctx["close"] = ctx["c"].close
        with ctx["c"].transaction():
            with ctx["c"].cursor().copy("COPY raw_services FROM STDIN (FORMAT csv)") as cp:
                cp.write(services[i])

    lat, late = steady(send, count, rate)
    return {"batches": count, "rows_per_batch": 100, "rate_per_s": rate, "p50_ms": pct(lat, 50) * 1000,
            "p99_ms": pct(lat, 99) * 1000, "max_ms": max(lat) * 1000, "late_p99_ms": pct(late, 99) * 1000}


# ---------------------------------------------------------------------------------------------
# DuckDB


def duckdb_convert(sim, out):
    """DuckDB converting the same NDJSON to Parquet, table by table (both cores)."""
    os.makedirs(out, exist_ok=True)
    con = duckdb.connect()
    rows = nbytes = 0
    t0 = time.perf_counter()
    for table in sorted({n.removesuffix(".ndjson") for s in os.listdir(sim) for n in os.listdir(os.path.join(sim, s))}):
        files = sorted(glob.glob(os.path.join(sim, "*", f"{table}.ndjson")))
        nbytes += sum(os.path.getsize(p) for p in files)
        con.execute(f"COPY (SELECT * FROM read_json({files!r}, format='newline_delimited', union_by_name=true)) "
                    f"TO '{os.path.join(out, table + '.parquet')}' (FORMAT parquet)")
        rows += con.execute(f"SELECT count(*) FROM '{os.path.join(out, table + '.parquet')}'").fetchone()[0]
    wall = time.perf_counter() - t0
    con.close()
    return {"rows": rows, "seconds": wall, "rows_per_s": rows / wall, "mb_per_s": nbytes / wall / 1e6}


def peer_sql(dialect, name, params):
    with open(os.path.join(HERE, dialect, f"{name}.sql"), encoding="utf-8") as f:
        return pgload.bind(f.read(), params)


DUCKDB_COLD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
import check_equal
export, store, sql = sys.argv[1], sys.argv[2], sys.stdin.read()
con = check_equal.duckdb_connection(export, store)
con.execute("SET enable_progress_bar = false")
t0 = time.perf_counter()
rows = con.execute(sql).fetchall()
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": len(rows)}))
"""


# ---------------------------------------------------------------------------------------------
# reports


def export_tables(server, export):
    """Every relation the reports read, as careledger's SQL sees it, to Parquet for the peers."""
    os.makedirs(export, exist_ok=True)
    sizes = {}
    for t in EXPORTS:
        conn = server.conn()
        conn.request("POST", "/v1/sql?format=arrow", json.dumps({"sql": f"SELECT * FROM {t}"}),
                     {"Authorization": f"Bearer {server.tokens['admin']}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"export {t}: {resp.status} {resp.read()[:300]!r}")
        reader = pa.ipc.open_stream(resp)
        path = os.path.join(export, f"{t}.parquet")
        rows = 0
        with pq.ParquetWriter(path, reader.schema) as w:
            for batch in reader:
                w.write_batch(batch)
                rows += batch.num_rows
        conn.close()
        sizes[t] = rows
    return sizes


def careledger_report(server, name, params):
    query = "&".join(f"{k}={v}" for k, (_t, v) in params.items() if v != "")
    conn = server.conn()
    t0 = time.perf_counter()
    conn.request("GET", f"/v1/reports/{name}?{query}", headers={"Authorization": f"Bearer {server.tokens['admin']}"})
    resp = conn.getresponse()
    data = resp.read()
    secs = time.perf_counter() - t0
    conn.close()
    if resp.status != 200:
        raise SystemExit(f"report {name}: {resp.status} {data[:300]!r}")
    answer = json.loads(data)
    COLUMNS[name] = [c["name"] for c in answer["columns"]]
    return secs, answer["rows"]


COLUMNS = {}
COLD_REPORTS = 1000  # reports timed cold, each on a fresh server (--cold-reports)
MEMORY = ()  # extra `serve` arguments for the report servers (--query-memory-mib)


def same_answer(mine, theirs, approx):
    """None when equal, else the first difference. Rates are exact in all three systems
    (careledger's exact_rate, written out in integer arithmetic in the peers' SQL), so they
    are compared as they are; only the columns careledger estimates (check_equal.APPROX)
    have a tolerance."""
    return check_equal.first_difference(mine, theirs, approx=approx)


def approx_by_index(name, r):
    """check_equal.APPROX (columns careledger computes approximately) by column index."""
    cols = r.get("_columns") or []
    return {cols.index(c): tol for c, tol in check_equal.APPROX.get(name, {}).items() if c in cols}


def timed(fn, warm_runs):
    first_secs, first_rows = fn()
    warm = [fn()[0] for _ in range(warm_runs)]
    return first_secs, statistics.median(warm), first_rows


def run_reports(binary, store, work, tokens, specs, warm_runs, pg):
    out = {}
    export = os.path.join(work, "export")
    log("careledger: exporting the reports' relations to Parquet for the peers")
    server = Server(binary, store, os.path.join(work, "server-reports.log"), tokens, MEMORY)
    t0 = time.perf_counter()
    sizes = export_tables(server, export)
    out["duckdb_reads"] = "store"
    out["export"] = {"seconds": time.perf_counter() - t0, "rows": sizes,
                     "bytes": sum(os.path.getsize(os.path.join(export, t + ".parquet")) for t in EXPORTS)}
    server.stop()

    results = {}
    # Cold and warm with the answer cache off: every request plans and runs the report.
    nocache = ("--report-cache-entries", "0", *MEMORY)
    shared = None
    for i, name in enumerate(specs):
        params = specs[name]
        if i < COLD_REPORTS:
            server = Server(binary, store, os.path.join(work, "server-reports.log"), tokens, nocache)
            cold, warm, rows = timed(lambda: careledger_report(server, name, params), warm_runs)
            server.stop()
        else:
            # Cold is the status derivation above again (a fresh server derives before any
            # report): past --cold-reports, one server stays up and cold is not taken.
            if shared is None:
                shared = Server(binary, store, os.path.join(work, "server-reports.log"), tokens, nocache)
            _, warm, rows = timed(lambda: careledger_report(shared, name, params), warm_runs)
            cold = None
        results[name] = {"careledger": {"cold_s": cold, "warm_s": warm, "rows": len(rows)}}
        results[name]["_careledger_rows"] = rows
        log(f"  careledger {name}: cold {cold if cold is None else round(cold, 3)} s, warm {warm:.3f} s, {len(rows)} rows")
    if shared is not None:
        shared.stop()
    # Where the time goes: each report's SQL as EXPLAIN ANALYZE on a warm server (plan_profile.py).
    server = Server(binary, store, os.path.join(work, "server-reports.log"), tokens, nocache)
    for name, params in specs.items():
        with open(os.path.join(REPO, "queries", f"{name}.sql"), encoding="utf-8") as f:
            sql = pgload.bind(f.read(), params)
        results[name]["careledger"]["profile"] = plan_profile.summarise(plan_profile.explain(server, sql))
    server.stop()
    log("  careledger: EXPLAIN ANALYZE of every report kept (profile)")
    # What a repeated dashboard request gets: the same answer from the server's answer cache.
    server = Server(binary, store, os.path.join(work, "server-reports.log"), tokens, MEMORY)
    for name, params in specs.items():
        careledger_report(server, name, params)
        results[name]["careledger"]["cached_s"] = statistics.median(
            careledger_report(server, name, params)[0] for _ in range(warm_runs))
    server.stop()

    # DuckDB reads the store's own files (the relations careledger stores, with the same
    # live-row rule), the reference tables from the export.
    con = check_equal.duckdb_connection(export, store)
    con.execute("SET enable_progress_bar = false")
    venv_python = sys.executable
    for name, params in specs.items():
        sql = peer_sql("duckdb", name, params)
        cold = subprocess.run([venv_python, "-c", DUCKDB_COLD, export, store, HERE], input=sql,
                              capture_output=True, text=True, check=True)
        cold_s = json.loads(cold.stdout.strip().splitlines()[-1])["seconds"]

        def once():
            t0 = time.perf_counter()
            r = con.execute(sql).fetchall()
            return time.perf_counter() - t0, r
        _, warm, rows = timed(once, warm_runs)
        results[name]["duckdb"] = {"cold_s": cold_s, "warm_s": warm, "rows": len(rows)}
        results[name]["_duckdb_rows"] = rows
        log(f"  duckdb {name}: cold {cold_s:.3f} s, warm {warm:.3f} s, {len(rows)} rows")
    con.close()

    with pg.connect() as c:
        out["pg_load"] = pgload.load(c, export)
    log(f"  postgres load {out['pg_load']}")
    for name, params in specs.items():
        sql = peer_sql("postgres", name, params)
        pg.restart()
        with pg.connect() as c:
            c.execute(f"SET statement_timeout = '{PG_TIMEOUT_S}s'")

            def once():
                t0 = time.perf_counter()
                r = c.execute(sql).fetchall()
                return time.perf_counter() - t0, r
            try:
                cold, warm, rows = timed(once, warm_runs)
            except psycopg.errors.QueryCanceled:
                results[name]["postgres"] = {"cold_s": None, "warm_s": None, "rows": 0, "timeout": True}
                results[name]["_postgres_rows"] = None
                log(f"  postgres {name}: over {PG_TIMEOUT_S} s, stopped")
                continue
        results[name]["postgres"] = {"cold_s": cold, "warm_s": warm, "rows": len(rows)}
        results[name]["_postgres_rows"] = rows
        log(f"  postgres {name}: cold {cold:.3f} s, warm {warm:.3f} s, {len(rows)} rows")

    answers = {}
    for name, r in results.items():
        r["_columns"] = COLUMNS.get(name)
        mine = check_equal.normalise(r.pop("_careledger_rows"))
        answers[name] = {"columns": COLUMNS.get(name), "careledger": mine}
        for peer in ("duckdb", "postgres"):
            theirs = r.pop(f"_{peer}_rows")
            if theirs is None:
                r[peer]["equal"] = None
                continue
            theirs = check_equal.normalise(theirs)
            answers[name][peer] = theirs
            diff = same_answer(mine, theirs, approx_by_index(name, r))
            r[peer]["equal"] = diff is None
            if diff:
                r[peer]["difference"] = diff
                log(f"  {name}: {peer} differs: {diff}")
        r.pop("_columns", None)
    out["reports"] = results
    out["answers"] = answers
    return out


# ---------------------------------------------------------------------------------------------


def versions(binary, pg_version):
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return {
        "careledger": rev + (" (with uncommitted changes)" if dirty else ""), "rustc": rustc,
        "duckdb": duckdb.__version__, "postgres": pg_version, "pyarrow": pa.__version__,
        "psycopg": psycopg.__version__, "python": platform.python_version(),
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}",
        "binary": binary,
    }


def run_scale(args, women, pg):
    work = os.path.join(args.work, f"w{women}")
    os.makedirs(work, exist_ok=True)
    if args.resume:
        # Reports only, on the store kept by an earlier run whose ingest figures are in the file.
        with open(args.resume) as f:
            res = json.load(f)
        # The ingest run's command, then this report run's (an earlier report run's is dropped).
        res["command"] = res["command"].split(" ; reports: ")[0] + f" ; reports: {' '.join(sys.argv)}"
        keep = os.path.join(work, f"store-s{max(args.senders)}")
        return finish_scale(args, women, pg, res, work, keep)
    res = {"women": women, "started": datetime.datetime.now().isoformat(timespec="seconds"),
           "command": " ".join(sys.argv)}
    sim = os.path.join(work, "sim")
    if not os.path.isdir(sim):
        log(f"simulating {women} women")
        t0 = time.perf_counter()
        subprocess.run([args.bin, "simulate", "--women", str(women), "--out", sim + ".tmp"], check=True, stdout=subprocess.DEVNULL)
        os.rename(sim + ".tmp", sim)
        res["simulate_s"] = time.perf_counter() - t0
    batches = plan_batches(sim, 10_000)
    res["rows"] = sum(b[5] for b in batches)
    res["ndjson_bytes"] = sum(b[4] for b in batches)
    res["rows_by_table"] = {}
    for b in batches:
        res["rows_by_table"][b[1]] = res["rows_by_table"].get(b[1], 0) + b[5]
    log(f"{res['rows']} rows, {res['ndjson_bytes'] / 1e6:.0f} MB NDJSON, {len(batches)} batches of ≤10k rows")

    res["ingest"] = []
    keep = None
    for senders in args.senders:
        log(f"careledger ingest, {senders} senders")
        r = careledger_ingest(args.bin, work, batches, senders, f"s{senders}")
        log(f"  {r['rows_per_s']:.0f} rows/s, {r['mb_per_s']:.1f} MB/s, ack p50 {r['ack_p50_ms']:.0f} ms p99 {r['ack_p99_ms']:.0f} ms, failed {r['failed_batches']}")
        res["ingest"].append(r)
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
        keep = r["store"]
    small = plan_batches(sim, 100, tables={"services"})
    log(f"careledger small batches: 100 rows at {args.small_rate}/s for {args.small_seconds} s")
    res["small"] = careledger_small(args.bin, work, small, args.small_rate, args.small_seconds)
    log(f"  {res['small']}")
    if args.ingest_only:
        out = os.path.join(args.results, f"ingest-{women}.json")
        os.makedirs(args.results, exist_ok=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
        log(f"ingest figures written to {out} (no peers, no reports: --ingest-only)")
        return None

    log("DuckDB: NDJSON to Parquet")
    res["duckdb_convert"] = duckdb_convert(sim, os.path.join(work, "duckdb-parquet"))
    log(f"  {res['duckdb_convert']}")
    shutil.rmtree(os.path.join(work, "duckdb-parquet"), ignore_errors=True)

    log("PostgreSQL: NDJSON to CSV (preparation, untimed)")
    csvdir = os.path.join(work, "csv")
    os.makedirs(csvdir, exist_ok=True)
    tables = ndjson_to_csv(sim, csvdir)
    chunks = []
    for table, spec in tables.items():
        for data in pg_chunks(spec["path"], 10_000):
            chunks.append((table, data, data.count(b"\n")))
    random.Random(7).shuffle(chunks)
    res["pg_copy"] = []
    for n in args.senders:
        log(f"PostgreSQL COPY, {n} connections")
        r = pg_copy_run(pg, tables, chunks, n)
        log(f"  {r['rows_per_s']:.0f} rows/s, {r['mb_per_s']:.1f} MB/s")
        res["pg_copy"].append(r)
    del chunks
    res["pg_small"] = pg_small(pg, tables, args.small_rate, args.small_seconds)
    log(f"  PostgreSQL small: {res['pg_small']}")
    with pg.connect() as c:
        for table in tables:
            c.execute(f"DROP TABLE IF EXISTS raw_{table}")
    shutil.rmtree(csvdir, ignore_errors=True)

    return finish_scale(args, women, pg, res, work, keep)


def finish_scale(args, women, pg, res, work, keep):
    log("reports")
    res.update(run_reports(args.bin, keep, work, None, report_specs(), args.warm_runs, pg))
    res["skipped_reports"] = SKIPPED_REPORTS
    res["warm_runs"] = args.warm_runs
    res["versions"] = versions(args.bin, pg.version)
    res["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    with open(os.path.join(work, "answers.json"), "w") as f:
        json.dump(res.pop("answers"), f, default=str)
    path = os.path.join(args.results, f"results-{women}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, default=str)
    log(f"wrote {path}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md


def f_rate(x):
    return "–" if x is None else f"{x:,.0f}"


def f_n(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def f_s(x):
    if x is None:
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def render(results_dir, out_path):
    runs = []
    for path in sorted(glob.glob(os.path.join(results_dir, "results-*.json"))):
        with open(path) as f:
            runs.append(json.load(f))
    runs.sort(key=lambda r: r["women"])
    if not runs:
        raise SystemExit(f"no results in {results_dir}")
    v = runs[-1]["versions"]
    lines = [
        "# careledger beside DuckDB and PostgreSQL",
        "",
        "Measured by `bench/peers/run` (see the README), which writes this file from "
        "`bench/peers/results/*.json`. Every figure below was measured in one run per scale, on "
        "the same simulated rows, on this machine; nothing here is edited by hand but the notes "
        "section at the end.",
        "",
        f"- Machine: {v['machine']}",
        f"- careledger {v['careledger']} (release build, {v['rustc']}); DuckDB {v['duckdb']} "
        f"(Python, pyarrow {v['pyarrow']}); PostgreSQL {v['postgres']} (psycopg {v['psycopg']}); "
        f"Python {v['python']}",
        "- PostgreSQL settings: " + ", ".join(f"`{k}={val}`" for k, val in Postgres.SETTINGS.items()),
        "- Ratios are careledger ÷ peer. For throughput, above 1 means careledger is faster; "
        "for time, below 1 means careledger is faster.",
        "",
    ]
    for r in runs:
        lines += [
            f"## {r['women']:,} women",
            "",
            f"Command: `{r['command']}` (started {r['started']}, finished {r['finished']}).",
            f"{r['rows']:,} rows ({', '.join(f'{t} {n:,}' for t, n in sorted(r['rows_by_table'].items()))}), "
            f"{r['ndjson_bytes'] / 1e6:,.0f} MB of NDJSON.",
            "",
            "### Ingest: 10k-row batches, acknowledged durably",
            "",
            "| senders | careledger rows/s | MB/s | ack p50 / p99 ms | server peak RSS MiB | PostgreSQL COPY rows/s | MB/s (CSV) | ack p50 / p99 ms | ratio rows/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        pgs = {p["connections"]: p for p in r["pg_copy"]}
        for i in r["ingest"]:
            p = pgs.get(i["senders"])
            lines.append(
                f"| {i['senders']} | {f_rate(i['rows_per_s'])} | {i['mb_per_s']:.1f} | {f_n(i['ack_p50_ms'])} / {f_n(i['ack_p99_ms'])} | {f_n(i.get('peak_rss_mib'))} | "
                + (f"{f_rate(p['rows_per_s'])} | {p['mb_per_s']:.1f} | {f_n(p.get('ack_p50_ms'))} / {f_n(p.get('ack_p99_ms'))} | {i['rows_per_s'] / p['rows_per_s']:.2f} |" if p else "– | – | – | – |")
            )
        d = r["duckdb_convert"]
        best = max(r["ingest"], key=lambda i: i["rows_per_s"])
        failed = sum(i["failed_batches"] for i in r["ingest"])
        lines += [
            "",
            f"DuckDB converting the same NDJSON to Parquet (one process, no acknowledgement per batch): "
            f"{f_rate(d['rows_per_s'])} rows/s, {d['mb_per_s']:.1f} MB/s ({d['seconds']:.1f} s); careledger's best ÷ DuckDB = "
            f"{best['rows_per_s'] / d['rows_per_s']:.2f}. Batches that failed in careledger's runs: {failed}; "
            f"rows rejected by validation: {f_n(r['ingest'][0].get('rows_rejected'))} per run.",
        ]
        tenths = [i for i in r["ingest"] if "first_tenth_rows_per_s" in i]
        if tenths:
            lines += [
                "",
                "Does a commit cost more as the table grows? The rate of the first and the last tenth of "
                "the batches (by acknowledgement), and the Parquet files the pushed tables hold right after "
                "the last acknowledgement (no `maintain` ran; on disk, and in brackets in the table's latest "
                "version where background compaction replaced some). Then the server ran on until its "
                "deriver reflected every commit and every pushed table had at most "
                f"{COMPACT_MAX_FILES} active files (at most {SETTLE_LIMIT_S} s): how long that took, the "
                "active files then, and the server's peak RSS in that time (the load's own peak is in the "
                "table above):",
                "",
                "| senders | first tenth rows/s | last tenth rows/s | last ÷ first | Parquet files per table | settled after s (derived after s) | active files then | peak RSS MiB then |",
                "|---:|---:|---:|---:|---|---:|---|---:|",
            ]
            for i in tenths:
                active = i.get("active_files", {})
                fl = ", ".join(
                    f"{t} {n}" + (f" ({active[t]} in the table)" if t in active and active[t] != n else "")
                    for t, n in sorted(i.get("parquet_files", {}).items()) if "/" not in t)
                settled = i.get("active_files_settled")
                after = (
                    f"{i['settle_s']:.0f} ({i['derived_after_s']:.0f}) | "
                    + ", ".join(f"{t} {n}" for t, n in sorted(settled.items()) if "/" not in t)
                    + f" | {f_n(i.get('peak_rss_after_mib'))}"
                    if settled is not None else "– | – | –"
                )
                lines.append(
                    f"| {i['senders']} | {f_rate(i['first_tenth_rows_per_s'])} | {f_rate(i['last_tenth_rows_per_s'])} | "
                    f"{i['last_tenth_rows_per_s'] / max(i['first_tenth_rows_per_s'], 1e-9):.2f} | {fl} | {after} |"
                )
        lines += [
            "",
            "### Small batches: 100 rows at a steady rate",
            "",
            "| system | batches | rate /s | ack p50 ms | ack p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, s in (("careledger", r["small"]), ("PostgreSQL COPY", r["pg_small"])):
            lines.append(f"| {label} | {s['batches']} | {s['rate_per_s']:.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} |")
        if r.get("ingest_note"):
            lines += ["", r["ingest_note"]]
        lines += [
            "",
            "### Reports: seconds, cold (first run in a fresh process) and warm (median of the next "
            f"{runs[-1].get('warm_runs', 5)}, careledger's answer cache off); cached = careledger "
            "answering a repeated request from its answer cache (ETag-keyed, what a dashboard's "
            "refresh gets). careledger is timed over HTTP (request to last byte of JSON), the peers "
            "in process (execute and fetch).",
            "",
            "| report | careledger cold | warm | cached | DuckDB cold | warm | PostgreSQL cold | warm | warm ÷ DuckDB | warm ÷ PostgreSQL | answers equal |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, x in sorted(r["reports"].items()):
            c, dd, pg = x["careledger"], x["duckdb"], x["postgres"]
            eq = "yes" if dd.get("equal") and pg.get("equal") else "DuckDB yes" if dd.get("equal") and pg.get("equal") is None else (
                "DuckDB " + ("yes" if dd.get("equal") else "NO") + ", PostgreSQL " + ("yes" if pg.get("equal") else "NO"))
            lines.append(
                f"| {name} | {f_s(c['cold_s'])} | {f_s(c['warm_s'])} | {f_s(c.get('cached_s'))} | {f_s(dd['cold_s'])} | {f_s(dd['warm_s'])} | "
                f"{f_s(pg['cold_s'])} | {f_s(pg['warm_s'])} | {c['warm_s'] / dd['warm_s']:.2f} | "
                + (f"{c['warm_s'] / pg['warm_s']:.2f}" if pg["warm_s"] else f"PostgreSQL over {PG_TIMEOUT_S} s") + f" | {eq} ({c['rows']} rows) |"
            )
        lines += where_time_goes(r)
        e = r["export"]
        lines += [
            "",
            f"Skipped: {', '.join(f'`{k}` ({why})' for k, why in r['skipped_reports'].items())}.",
            "",
            (f"DuckDB reads the tables careledger stores from the store's own Parquet files (the "
             f"active files of each Delta table, with careledger's live-row rule: complete cycles, "
             f"superseded women dropped, current rows), and the reference tables from an export. "
             if r.get("duckdb_reads") == "store" else "The peers read Parquet exports of the relations the reports name, as careledger's SQL sees them. ")
            + f"PostgreSQL loads Parquet exports of every relation the reports name, as careledger's SQL "
            f"sees them ({e['bytes'] / 1e6:,.0f} MB; ledger_runs {e['rows']['ledger_runs']:,} rows, "
            f"services {e['rows']['services']:,}), exported in {e['seconds']:.1f} s; it loaded "
            f"them in {r['pg_load']['load_s']:.1f} s and built its indexes in {r['pg_load']['index_s']:.1f} s.",
            "",
        ]
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes, encoding="utf-8") as f:
            lines += [f.read().rstrip(), ""]
    with open(out_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    log(f"wrote {out_path}")


# The targets of issue 16: warm no slower than DuckDB; at 1M women and more, warm within
# 0.5 s and cold within 2 s.
TARGET_WARM_S, TARGET_COLD_S, TARGET_FROM_WOMEN = 0.5, 2.0, 1_000_000


def above_target(women, x):
    """Why a report's careledger times miss the targets, or an empty list."""
    c, dd = x["careledger"], x["duckdb"]
    why = []
    if dd.get("warm_s") and c["warm_s"] > dd["warm_s"]:
        why.append(f"warm {c['warm_s'] / dd['warm_s']:.2f}× DuckDB")
    if women >= TARGET_FROM_WOMEN and c["warm_s"] > TARGET_WARM_S:
        why.append(f"warm over {TARGET_WARM_S} s")
    if women >= TARGET_FROM_WOMEN and c.get("cold_s") and c["cold_s"] > TARGET_COLD_S:
        why.append(f"cold over {TARGET_COLD_S:.0f} s")
    return why


def where_time_goes(r):
    """For each report above the targets, its EXPLAIN ANALYZE summarised (plan_profile.py)."""
    missed = [(name, x, above_target(r["women"], x)) for name, x in sorted(r["reports"].items())]
    missed = [m for m in missed if m[2]]
    met = len(r["reports"]) - len(missed)
    lines = [
        "",
        f"#### Against the targets (warm no slower than DuckDB; at {TARGET_FROM_WOMEN:,} women and more, "
        f"warm within {TARGET_WARM_S} s and cold within {TARGET_COLD_S:.0f} s): {met} of {len(r['reports'])} reports meet them",
    ]
    if not missed:
        return lines
    lines += [
        "",
        "Where careledger's time goes in each report that misses them: its SQL (default parameters) "
        "as `EXPLAIN ANALYZE` on a warm server (the second of two runs), summarised by "
        "`bench/peers/plan_profile.py`. Scans: the rows the Parquet reader decoded (what row-group and "
        "page statistics left) and passed on, and its CPU time. Operators: their own CPU time "
        "(hash joins: the probe's; the build's time holds its input's work and is left out). CPU "
        "times are summed over the two partitions, so they can add up to more than the wall time. "
        "What would fix each is in the notes below.",
        "",
    ]
    for name, x, why in missed:
        p = x["careledger"].get("profile")
        if not p:
            lines.append(f"- **{name}** ({'; '.join(why)}): no EXPLAIN ANALYZE in this run's results.")
            continue
        lines += plan_profile.render(name, x["careledger"]["warm_s"], p, why)
    return lines


def benchmarks_path(results):
    """The repo's BENCHMARKS.md for the repo's results; beside any other results directory, so a
    trial run elsewhere does not overwrite the measured file."""
    if os.path.abspath(results) == os.path.join(REPO, "bench", "peers", "results"):
        return os.path.join(REPO, "BENCHMARKS.md")
    return os.path.join(results, "BENCHMARKS.md")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/careledger/target"))
    ap.add_argument("--bin", default=os.path.join(target, "release", "careledger"))
    ap.add_argument("--women", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--senders", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--small-rate", type=float, default=20.0, help="100-row batches per second")
    ap.add_argument("--small-seconds", type=float, default=30.0)
    ap.add_argument("--warm-runs", type=int, default=3)
    ap.add_argument("--work", default="/tmp/careledger-peers", help="scratch directory (simulated data, stores, PostgreSQL)")
    ap.add_argument("--results", default=os.path.join(REPO, "bench", "peers", "results"), help="results directory; BENCHMARKS.md is written in the repo only for the default one")
    ap.add_argument("--pg-port", type=int, default=55432)
    ap.add_argument("--keep", action="store_true", help="keep the scratch data of each scale")
    ap.add_argument("--render", action="store_true", help="only write BENCHMARKS.md from the results")
    ap.add_argument("--query-memory-mib", type=int, default=20000, help="serve --query-memory-mib (and --query-timeout-s 600) for the report servers: 1M women need more than the 2 GiB default")
    ap.add_argument("--cold-reports", type=int, default=1000, help="time only the first N reports cold (each cold run derives the status of every woman again)")
    ap.add_argument("--ingest-only", action="store_true", help="careledger's ingest runs and small batches only (no peers, no reports), written to <results>/ingest-<women>.json; BENCHMARKS.md is not touched")
    ap.add_argument("--resume", default=None, help="reports only: a results file holding this scale's ingest figures; the store is <work>/w<women>/store-s<max senders>")
    args = ap.parse_args()
    if args.render:
        render(args.results, benchmarks_path(args.results))
        return
    global MEMORY, COLD_REPORTS
    COLD_REPORTS = args.cold_reports
    if args.query_memory_mib:
        MEMORY = ("--query-memory-mib", str(args.query_memory_mib), "--query-timeout-s", "600")
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    if args.ingest_only:
        for women in args.women:
            run_scale(args, women, None)
        return
    pg = Postgres(os.path.join(args.work, "pg"), args.pg_port)
    try:
        for women in args.women:
            run_scale(args, women, pg)
    finally:
        pg.stop()
    render(args.results, benchmarks_path(args.results))


if __name__ == "__main__":
    main()
