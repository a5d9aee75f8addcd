"""Where a careledger report's time goes: its EXPLAIN ANALYZE, summarised.

bench.py runs each report's SQL (parameters bound) as `EXPLAIN ANALYZE` through `/v1/sql` on a
warm server, twice (the first warms the files), and keeps a summary of the second plan's
metrics in the results; BENCHMARKS.md shows it for the reports above the targets.

The summary, per plan:
  - scans: per table, the rows the Parquet reader decoded (what the row-group and page
    statistics left), the rows it passed on, and its CPU time (`time_elapsed_processing`);
  - operators: aggregates, sorts, windows, projections and filters by their own CPU time
    (`elapsed_compute`); hash joins by the rows of each side and the probe's time
    (`join_time`). A hash join's build time is left out: DataFusion times it around the build
    side's stream, so it holds that input's own work too.
Times are CPU time summed over the query's partitions (two here), so they add up to more than
the wall time when both cores work at once.
"""

import json
import re

_METRIC = re.compile(r"(\w+)=((?:[^,\[\]]|\[[^\]]*\])+)")


def explain(server, sql):
    """EXPLAIN ANALYZE of `sql` on `server` (the second of two runs): the plan's text."""
    text = None
    for _ in range(2):
        conn = server.conn()
        conn.request("POST", "/v1/sql", json.dumps({"sql": "EXPLAIN ANALYZE " + sql}),
                     {"Authorization": f"Bearer {server.tokens['admin']}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"EXPLAIN ANALYZE: {resp.status} {data[:300]!r}")
        rows = json.loads(data)["rows"]
        text = rows[-1][-1] if isinstance(rows[-1], list) else rows[-1]["plan"]
    return text


def _ms(value):
    """A DataFusion duration (`1.23s`, `45.6ms`, `789µs`, `12ns`) in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(ns|µs|us|ms|s)", value.strip())
    if not m:
        return None
    n, unit = float(m.group(1)), m.group(2)
    return n * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _count(value):
    """A DataFusion count (`2.16 M`, `442.6 K`, `108`)."""
    m = re.fullmatch(r"([0-9.]+)\s*([KMB]?)", value.strip())
    if not m:
        return None
    return int(round(float(m.group(1)) * {"": 1, "K": 1e3, "M": 1e6, "B": 1e9}[m.group(2)]))


def _metrics(line):
    start = line.rfind("metrics=[")
    if start < 0:
        return {}
    return {k: v.strip() for k, v in _METRIC.findall(line[start + len("metrics=["):])}


def _table(line):
    m = re.search(r"/(derived/[a-z_]+|[a-z_]+)/part-", line)
    if not m:
        return None
    t = m.group(1).removeprefix("derived/")
    return t.removeprefix("current_") if m.group(1).startswith("derived/current_") else t


def _top_level(text):
    """The items of a comma-separated list, split only outside brackets and parentheses."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return items


def _describe(op, line):
    body = line.strip()[len(op) + 1:].strip()
    if op == "AggregateExec":
        mode = re.search(r"mode=(\w+)", body)
        gby = re.search(r"gby=\[(.*?)\], aggr=", body)
        aggr = re.search(r"aggr=\[(.*?)\](?:, ordering_mode|, metrics)", body)
        keys = ", ".join(k.split(" as ")[-1] for k in gby.group(1).split(", ")) if gby and gby.group(1) else ""
        funcs = sorted({re.match(r"\w*", item).group(0) for item in _top_level(aggr.group(1))} - {""}) if aggr else []
        return f"{(mode.group(1) if mode else '').lower()} by [{keys[:60]}]: {', '.join(funcs)[:60]}"
    if op == "HashJoinExec":
        jt = re.search(r"join_type=(\w+)", body)
        on = re.search(r"on=\[\((.*?)\)\]", body)
        return f"{jt.group(1) if jt else ''} on {on.group(1)[:60] if on else ''}"
    if op in ("SortExec", "BoundedWindowAggExec", "WindowAggExec", "ProjectionExec", "FilterExec"):
        return re.sub(r", metrics=\[.*$", "", body)[:90]
    return ""


def summarise(plan):
    """The scans and the operators of a plan's text, as described in this module's doc."""
    scans, ops = [], []
    for line in plan.splitlines():
        name = line.strip().split(":")[0].split(",")[0]
        m = _metrics(line)
        if name == "DataSourceExec" and "file_groups" in line:
            decoded = m.get("page_index_rows_pruned", "")
            decoded = _count(decoded.split("→")[-1].replace("matched", "")) if "→" in decoded else _count(m.get("output_rows", "0"))
            scans.append({
                "table": _table(line) or "?",
                "decoded_rows": decoded,
                "output_rows": _count(m.get("output_rows", "0")),
                "cpu_ms": _ms(m.get("time_elapsed_processing", "0ns")),
            })
        elif name == "HashJoinExec":
            ops.append({
                "op": "HashJoin", "what": _describe(name, line),
                "build_rows": _count(m.get("build_input_rows", "0")),
                "probe_rows": _count(m.get("input_rows", "0")),
                "output_rows": _count(m.get("output_rows", "0")),
                "cpu_ms": _ms(m.get("join_time", "0ns")),
            })
        elif name in ("AggregateExec", "SortExec", "BoundedWindowAggExec", "WindowAggExec", "ProjectionExec", "FilterExec"):
            cpu = _ms(m.get("elapsed_compute", "0ns"))
            if cpu is None or cpu < 1:
                continue
            ops.append({
                "op": name.removesuffix("Exec"), "what": _describe(name, line),
                "output_rows": _count(m.get("output_rows", "0")),
                "cpu_ms": cpu,
            })
    merged = {}
    for s in scans:
        t = merged.setdefault(s["table"], {"table": s["table"], "decoded_rows": 0, "output_rows": 0, "cpu_ms": 0.0})
        for k in ("decoded_rows", "output_rows"):
            t[k] += s[k] or 0
        t["cpu_ms"] += s["cpu_ms"] or 0
    return {
        "scans": sorted(merged.values(), key=lambda s: -s["cpu_ms"]),
        "operators": sorted(ops, key=lambda o: -(o["cpu_ms"] or 0)),
    }


def _n(x):
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.0f}k"
    return str(x)


def render(name, wall_s, profile, why=(), top=5):
    """Markdown lines: one report's summary (why it is listed, its scans, then its `top`
    operators by CPU)."""
    scans = "; ".join(
        f"{s['table']} {_n(s['decoded_rows'])} rows decoded → {_n(s['output_rows'])} out, {s['cpu_ms']:.0f} ms"
        for s in profile["scans"])
    scan_ms = sum(s["cpu_ms"] for s in profile["scans"])
    head = "; ".join([*why, f"warm {wall_s:.3f} s", f"EXPLAIN ANALYZE: scans {scan_ms:.0f} ms CPU in all"])
    lines = [f"- **{name}** ({head}). Scans: {scans}."]
    ops = [o for o in profile["operators"] if (o["cpu_ms"] or 0) >= 5][:top]
    if ops:
        parts = []
        for o in ops:
            if o["op"] == "HashJoin":
                parts.append(f"HashJoin {o['what']} (build {_n(o['build_rows'])}, probe {_n(o['probe_rows'])} rows) probe {o['cpu_ms']:.0f} ms")
            else:
                parts.append(f"{o['op']} {o['what']} → {_n(o['output_rows'])} rows, {o['cpu_ms']:.0f} ms")
        lines.append("  Operators by CPU: " + "; ".join(f"`{p}`" for p in parts) + ".")
    return lines
