#!/usr/bin/env python3
"""Reads careledger's derived ledger with no careledger running: deltalake (Python) for the
deriver's watermark, DuckDB and polars over the Delta tables (docs/derived-ledger.md).

    python3 scripts/read_derived.py ./careledger-data

Prints, from each reader, the current episodes by exit reason and the women in the ledger
on the last day of the data, and exits 1 if the readers disagree. Needs `deltalake`, `polars`,
`duckdb` and `pyarrow` (bench/peers/requirements.txt installs them into the peers venv).
"""
import sys

import duckdb
import polars as pl
from deltalake import DeltaTable

APP = "careledger-deriver/"


def watermark(store):
    """The last complete cycle and the floor, from `derived/superseded`'s transactions."""
    sup = DeltaTable(f"{store}/derived/superseded")
    cycle = sup.transaction_version(APP + "cycle") or 0
    floor = sup.transaction_version(APP + "floor") or 0
    return sup, cycle, floor


def live_duckdb(con, name, cycle, floor):
    """DuckDB SQL for the live, current rows of derived table `name`."""
    return (
        f"SELECT t.* EXCLUDE (gen, known_from, known_to) FROM {name}_all t "
        f"WHERE t.gen BETWEEN {floor} AND {cycle} AND t.known_to IS NULL "
        f"AND NOT EXISTS (SELECT 1 FROM superseded s WHERE s.person_key = t.person_key "
        f"AND s.gen > t.gen AND s.gen <= {cycle})"
    )


def live_polars(store, name, sup, cycle, floor):
    """The same with polars."""
    rows = pl.read_delta(f"{store}/derived/{name}")
    dead = (
        pl.from_arrow(sup.to_pyarrow_table())
        .filter(pl.col("gen") <= cycle)
        .group_by("person_key")
        .agg(pl.col("gen").max().alias("sg"))
    )
    return (
        rows.filter(
            pl.col("gen").is_between(floor, cycle) & pl.col("known_to").is_null()
        )
        .join(dead, on="person_key", how="left")
        .filter(pl.col("sg").is_null() | (pl.col("sg") <= pl.col("gen")))
        .drop(["sg", "gen", "known_from", "known_to"])
    )


def main():
    store = sys.argv[1] if len(sys.argv) > 1 else "./careledger-data"
    sup, cycle, floor = watermark(store)
    print(f"derived ledger at cycle {cycle} (floor {floor})")
    con = duckdb.connect()
    for name in ["status_episodes", "people"]:
        ds = DeltaTable(f"{store}/derived/{name}").to_pyarrow_dataset()
        con.register(f"{name}_all", ds)
    con.register("superseded", sup.to_pyarrow_dataset())
    q = (
        f"SELECT coalesce(exit_reason, '(open)') AS exit_reason, count(*) AS n "
        f"FROM ({live_duckdb(con, 'status_episodes', cycle, floor)}) GROUP BY 1 ORDER BY 1"
    )
    by_duckdb = con.execute(q).fetchall()
    episodes = live_polars(store, "status_episodes", sup, cycle, floor)
    by_polars = sorted(
        episodes.with_columns(pl.col("exit_reason").fill_null("(open)"))
        .group_by("exit_reason")
        .len()
        .rows()
    )
    print("episodes by exit reason (DuckDB):", by_duckdb)
    print("episodes by exit reason (polars):", by_polars)
    last = episodes.select(pl.col("start_date").max()).item()
    in_ledger = episodes.filter(
        (pl.col("start_date") <= last)
        & (pl.col("end_date").is_null() | (pl.col("end_date") > last))
    ).select(pl.col("person_key").n_unique()).item()
    print(f"women in the ledger on {last} (polars): {in_ledger}")
    if [tuple(r) for r in by_duckdb] != [tuple(r) for r in by_polars]:
        print("the readers disagree", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
