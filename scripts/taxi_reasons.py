"""Count the taxi trips of the real TLC file that silver quarantines, per reason.

DuckDB runs the taxi contract's checks that real trips can fail (a required measure out of
its valid range, then each cross-field rule, in silver's order: the first failing check
gives the reason) over the trips the replay reader produces. It prints the README's table.

    .venv/bin/python scripts/taxi_reasons.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb
import polars as pl

from ingest.datasets import read_taxi
from periscope import get_settings
from periscope.contracts import TAXI, Count, Measure, SourceContract


def checks(contract: SourceContract) -> list[tuple[str, str]]:
    """(reason, SQL condition) of the value checks, in silver's order."""
    out_of_range = []
    for f in contract.value_fields:
        if isinstance(f, Measure) and f.required:
            out_of_range.append(
                f"(isnan({f.name}) or {f.name} not between {f.valid_min} and {f.valid_max})"
            )
        elif isinstance(f, Count):
            top = f" or {f.name} > {f.valid_max}" if f.valid_max is not None else ""
            out_of_range.append(f"({f.name} < 0{top})")
    return [("out_of_range", " or ".join(out_of_range))] + [
        (rule.reason, rule.condition) for rule in contract.rules
    ]


def reasons(trips: pl.DataFrame, contract: SourceContract) -> pl.DataFrame:
    """Per reason: `first` (trips it quarantines: its check is the first they fail) and
    `breaking` (trips failing its check at all)."""
    listed = checks(contract)
    first = "case " + " ".join(f"when coalesce({c}, false) then '{r}'" for r, c in listed) + " end"
    counts = ", ".join(f'count(*) filter (coalesce({c}, false)) as "{r}"' for r, c in listed)
    con = duckdb.connect()
    con.register("trips", trips.to_arrow())
    firsts = dict(con.sql(f"select {first} as reason, count(*) from trips group by 1").fetchall())
    breaking = con.sql(f"select {counts} from trips").fetchone() or ()
    return pl.DataFrame(
        {
            "reason": [r for r, _ in listed],
            "condition": [c for _, c in listed],
            "first": [firsts.get(r, 0) for r, _ in listed],
            "breaking": list(breaking),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, help="the shared data folder (default: the setting)"
    )
    args = parser.parse_args()
    trips = read_taxi(args.data_dir or get_settings().data_dir)
    table = reasons(trips, TAXI)
    print(f"{trips.height:,} trips; {table['first'].sum():,} quarantined\n")
    print("| reason | condition | trips quarantined for it | trips breaking it |")
    print("|---|---|---:|---:|")
    for row in table.iter_rows(named=True):
        shown = (
            "a required measure outside its valid range"
            if row["reason"] == "out_of_range"
            else f"`{row['condition']}`"
        )
        print(f"| `{row['reason']}` | {shown} | {row['first']:,} | {row['breaking']:,} |")


if __name__ == "__main__":
    main()
