#!/usr/bin/env python3
"""A named report requested right after a commit (not in CI): one server with the default
query limits on an existing store; each round pushes one batch of `--batch-rows` rows (the
store's simulated women sent again as new records), and as soon as it is acknowledged asks for
a named report, without waiting for the deriver. Prints the report latencies (p50, p99, max),
what the answers reflected, and the time until the batch was reflected.

    python3 scripts/report_after_commit.py --store /tmp/careledger-peers/w1000000/store-s16 \\
        --sim /tmp/careledger-peers/w1000000/sim --rounds 30

Standard library only; loopback only.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPORTS = [
    "stock?as_of=2024-12-31&level=county",
    "entries?from=2024-01-01&to=2025-01-01&level=city",
    "coverage_by_measure?from=2024-01-01&to=2025-01-01&level=city",
    "priority_gap_counts?as_of=2024-12-31&level=city",
    "balance?from=2024-01-01&to=2025-01-01&level=city",
]


def request(method, url, token, body=None, headers=None, timeout=120):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return time.monotonic() - t0, resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return time.monotonic() - t0, e.code, dict(e.headers), e.read()


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--store", required=True)
    ap.add_argument("--sim", required=True, help="`careledger simulate --out` directory of the store's women")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch-rows", type=int, default=10000)
    ap.add_argument("--table", default="services")
    args = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/careledger/target"))
    binary = args.bin or os.path.join(target, "release", "careledger")

    lines = []
    for source in sorted(os.listdir(args.sim)):
        path = os.path.join(args.sim, source, f"{args.table}.ndjson")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                lines += [(source, l) for l in f.read().splitlines() if l.strip()]
            if len(lines) >= args.rounds * args.batch_rows:
                break
    log = open(os.path.join(args.store, "..", "report-after-commit.log"), "w")
    server = subprocess.Popen([binary, "serve", "--store", args.store, "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=log, text=True)
    url = server.stdout.readline().strip().removeprefix("careledger listening on ")
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    tokens = {}
    with open(os.path.join(args.store, "tokens-initial.txt"), encoding="utf-8") as f:
        for row in f:
            if not row.startswith("#"):
                name, _, tok = row.rstrip("\n").split("\t")
                tokens[name] = tok
    admin = tokens["admin"]
    # The deriver first reflects whatever the store holds.
    t0 = time.monotonic()
    while True:
        secs, status, _, _ = request("POST", f"{url}/v1/sql?wait_for=latest", admin,
                                     json.dumps({"sql": "SELECT 1"}).encode(), {"Content-Type": "application/json"})
        if status == 200:
            break
    print(f"server {url}; caught up in {time.monotonic() - t0:.1f} s", flush=True)

    latencies, statuses, fresh = [], {}, []
    stamp = int(time.time())
    for r in range(args.rounds):
        chunk = lines[r * args.batch_rows:(r + 1) * args.batch_rows]
        source = chunk[0][0]
        body = "\n".join(l.replace('"record_id":"', f'"record_id":"ac{stamp}-{r}-', 1)
                         for s, l in chunk if s == source).encode()
        secs, status, _, data = request("POST", f"{url}/v1/ingest/{args.table}?atomic=false", tokens[source], body,
                                        {"Content-Type": "application/x-ndjson"})
        if status != 200:
            sys.exit(f"push {r}: {status} {data[:300]!r}")
        acked = time.monotonic()
        batch = json.loads(data)["batch_id"]
        report = REPORTS[r % len(REPORTS)]
        secs, status, headers, data = request("GET", f"{url}/v1/reports/{report}", admin)
        statuses[status] = statuses.get(status, 0) + 1
        latencies.append(secs)
        reflects = {k.lower(): v for k, v in headers.items()}.get("careledger-derived-cycle")
        # Then: how long until the batch is reflected.
        _, s2, _, _ = request("POST", f"{url}/v1/sql?wait_for={batch}", admin,
                              json.dumps({"sql": "SELECT 1"}).encode(), {"Content-Type": "application/json"})
        fresh.append(time.monotonic() - acked)
        print(f"  round {r}: {report.split('?')[0]} {status} in {secs * 1000:.0f} ms (cycle {reflects}); "
              f"reflected {fresh[-1]:.1f} s after the ack ({s2})", flush=True)
    server.send_signal(signal.SIGINT)
    server.wait(timeout=300)
    ms = [x * 1000 for x in latencies]
    print(f"\nreport right after a {args.batch_rows}-row commit: {len(ms)} requests, statuses {statuses}; "
          f"ms p50 {pct(ms, 50):.0f} p99 {pct(ms, 99):.0f} max {max(ms):.0f}")
    print(f"ack to reflected: s p50 {pct(fresh, 50):.1f} p99 {pct(fresh, 99):.1f} max {max(fresh):.1f}")
    sys.exit(0 if set(statuses) == {200} else 1)


if __name__ == "__main__":
    main()
