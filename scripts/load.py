#!/usr/bin/env python3
"""Load test (not in CI): one careledger server on loopback and a temporary store; pushers and
report/SQL queriers run together for a bounded time. Prints errors, latency percentiles, the
server's peak memory, and exits non-zero if any request failed unexpectedly.

    cargo build --release -p careledger
    python3 scripts/load.py --bin "$CARGO_TARGET_DIR/release/careledger" --duration 180

Standard library only. Loopback only: the server binds 127.0.0.1 and the script talks to nothing
else.
"""

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPORTS = [
    "stock?as_of=2024-12-31&level=county",
    "stock?as_of=2024-06-30&level=city",
    "entries?from=2024-01-01&to=2025-01-01&level=city",
    "exits?from=2024-01-01&to=2025-01-01&level=city",
    "balance?from=2024-01-01&to=2025-01-01&level=city",
    "coverage_by_measure?from=2024-01-01&to=2025-01-01&level=city",
    "priority_gap_counts?as_of=2024-12-31&level=city",
    "registration_discrepancies?as_of=2024-12-31&level=city",
    "source_health",
]
SQL = [
    "SELECT entry_reason, count(*) AS n FROM status_episodes GROUP BY 1",
    "SELECT service_type, count(*) AS n FROM services GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
]


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies = []
        self.statuses = {}
        self.errors = []
        self.rows = 0

    def add(self, seconds, status, detail=None, rows=0):
        with self.lock:
            self.latencies.append(seconds)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.rows += rows
            if detail is not None and len(self.errors) < 10:
                self.errors.append(f"{status}: {detail[:300]}")

    def line(self, name, elapsed):
        ms = [x * 1000 for x in self.latencies]
        ok = sum(v for k, v in self.statuses.items() if isinstance(k, int) and 200 <= k < 300)
        return (
            f"{name:8} {len(ms):7} requests ({len(ms) / elapsed:7.1f}/s), {ok} ok, statuses {dict(sorted(self.statuses.items(), key=str))}; "
            f"latency ms p50 {percentile(ms, 50):.1f} p95 {percentile(ms, 95):.1f} p99 {percentile(ms, 99):.1f} max {max(ms) if ms else float('nan'):.1f}"
        )


def request(method, url, token, body=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
            return time.monotonic() - started, resp.status, data
    except urllib.error.HTTPError as e:
        return time.monotonic() - started, e.code, e.read()
    except Exception as e:  # connection refused, reset, timeout
        return time.monotonic() - started, type(e).__name__, str(e).encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None, help="the careledger binary (default: the release build under CARGO_TARGET_DIR)")
    ap.add_argument("--women", type=int, default=20000)
    ap.add_argument("--duration", type=float, default=180, help="seconds of load")
    ap.add_argument("--pushers", type=int, default=4)
    ap.add_argument("--queriers", type=int, default=2)
    ap.add_argument("--batch-rows", type=int, default=500)
    ap.add_argument("--store", default=None, help="an existing store to load (e.g. the peers bench's 1M store, kept with --keep); "
                    "the pushers send its simulated women again as new records. Default: a new store in the work dir")
    ap.add_argument("--sim", default=None, help="simulated rows to push (a `careledger simulate --out` directory); default: simulate --women")
    ap.add_argument("--serve-arg", action="append", default=[], help="an extra `serve` argument (repeatable)")
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/careledger/target"))
    binary = args.bin or os.path.join(target, "release", "careledger")
    if not os.path.exists(binary):
        sys.exit(f"no binary at {binary}: cargo build --release -p careledger, or give --bin")

    work = tempfile.mkdtemp(prefix="careledger-load-")
    sim = args.sim or os.path.join(work, "sim")
    store = args.store or os.path.join(work, "store")
    if not args.sim:
        print(f"work dir {work}; simulating {args.women} women …", flush=True)
        subprocess.run([binary, "simulate", "--women", str(args.women), "--out", sim], check=True, stdout=subprocess.DEVNULL)
    chunks = []  # (source, table, [lines])
    for source in sorted(os.listdir(sim)):
        for name in sorted(os.listdir(os.path.join(sim, source))):
            with open(os.path.join(sim, source, name), encoding="utf-8") as f:
                lines = [l for l in f.read().splitlines() if l.strip()]
            table = name.removesuffix(".ndjson")
            for i in range(0, len(lines), args.batch_rows):
                chunks.append((source, table, lines[i : i + args.batch_rows]))
    random.Random(7).shuffle(chunks)
    print(f"{len(chunks)} batches of up to {args.batch_rows} rows ready", flush=True)

    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen(
        [binary, "serve", "--store", store, "--listen", "127.0.0.1:0", *args.serve_arg],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    url = server.stdout.readline().strip().removeprefix("careledger listening on ")
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    tokens = {}
    with open(os.path.join(store, "tokens-initial.txt"), encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                name, _, tok = line.rstrip("\n").split("\t")
                tokens[name] = tok
    print(f"server {url} (pid {server.pid}); load for {args.duration:.0f} s with {args.pushers} pushers and {args.queriers} queriers", flush=True)

    peak = {"rss_kib": 0}
    stop = threading.Event()

    def sample_memory():
        while not stop.is_set():
            try:
                with open(f"/proc/{server.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            peak["rss_kib"] = max(peak["rss_kib"], int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.25)

    pushes, queries, fresh = Stats(), Stats(), Stats()
    acked = {"last": None}  # (batch_id, monotonic ack time) of the latest acknowledged batch
    feed = itertools.count()
    deadline = time.monotonic() + args.duration

    def pusher():
        while time.monotonic() < deadline:
            n = next(feed)
            source, table, lines = chunks[n % len(chunks)]
            cycle = n // len(chunks)
            if cycle:
                # Later cycles send the same people again as new records (new keys).
                lines = [l.replace('"record_id":"', f'"record_id":"c{cycle}-', 1) for l in lines]
            body = ("\n".join(lines) + "\n").encode()
            secs, status, data = request(
                "POST", f"{url}/v1/ingest/{table}?atomic=false", tokens[source], body,
                {"Content-Type": "application/x-ndjson", "Idempotency-Key": f"load-{n}"},
            )
            ok = isinstance(status, int) and status < 300
            receipt = json.loads(data) if ok else {}
            rows = receipt.get("rows_accepted", 0)
            if ok and receipt.get("batch_id") and receipt.get("table_version") is not None:
                acked["last"] = (receipt["batch_id"], time.monotonic())
            pushes.add(secs, status, None if ok else data.decode("utf-8", "replace"), rows)

    def querier(seed):
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            if rng.random() < 0.8:
                secs, status, data = request("GET", f"{url}/v1/reports/{rng.choice(REPORTS)}", tokens["admin"])
            else:
                body = json.dumps({"sql": rng.choice(SQL)}).encode()
                secs, status, data = request("POST", f"{url}/v1/sql", tokens["admin"], body, {"Content-Type": "application/json"})
            ok = isinstance(status, int) and status < 300
            queries.add(secs, status, None if ok else data.decode("utf-8", "replace"))

    def freshness():
        """From a batch's acknowledgement to the moment the derived ledger reflects it: a
        request that waits for the batch (`wait_for`), answered when it is reflected."""
        while time.monotonic() < deadline:
            last = acked["last"]
            if last is None:
                time.sleep(0.2)
                continue
            batch, at = last
            body = json.dumps({"sql": "SELECT 1 AS reflected"}).encode()
            secs, status, data = request("POST", f"{url}/v1/sql?wait_for={batch}", tokens["admin"], body,
                                         {"Content-Type": "application/json"}, timeout=120)
            ok = isinstance(status, int) and status < 300
            fresh.add(time.monotonic() - at, status, None if ok else data.decode("utf-8", "replace"))
            time.sleep(1.0)

    threads = [threading.Thread(target=sample_memory, daemon=True)]
    threads += [threading.Thread(target=freshness)]
    threads += [threading.Thread(target=pusher) for _ in range(args.pushers)]
    threads += [threading.Thread(target=querier, args=(i,)) for i in range(args.queriers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    elapsed = time.monotonic() - started
    stop.set()
    hwm = None
    try:
        with open(f"/proc/{server.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    server.send_signal(signal.SIGINT)
    code = server.wait(timeout=120)

    print(f"\nran {elapsed:.0f} s; {pushes.rows} rows accepted ({pushes.rows / elapsed:.0f} rows/s)")
    print(pushes.line("pushes", elapsed))
    print(queries.line("queries", elapsed))
    print(fresh.line("freshness (ack to reflected)", elapsed))
    print(f"server peak RSS {peak['rss_kib'] / 1024:.0f} MiB (sampled), VmHWM {hwm / 1024 if hwm else float('nan'):.0f} MiB; exit status {code}")
    errors = pushes.errors + queries.errors
    for e in errors:
        print("  error:", e)
    print(f"server log: {os.path.join(work, 'server.log')}")
    failed = code != 0 or any(
        not (isinstance(k, int) and k < 300) for s in (pushes, queries, fresh) for k in s.statuses
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
