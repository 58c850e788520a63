"""Silver validation speed: the Arrow/DuckDB validator beside Spark's, on the same bronze rows.

Builds M records per source the way the replay builds them (the real datasets through
`ingest.replay.build_messages`, 1% malformed from the chaos hooks; the dataset repeated when it
holds fewer rows, as taxi's January does), as one bronze Arrow table, then times
`validate_arrow` (best of `--repeat`) and, with `--spark`, Spark's path on the same table:
`validate(...)` plus the select and `toArrow()` that `BatchProcessor._validate` runs. Spark's
figure excludes the JVM and session start-up (printed on its own line) and the conversion of
the Arrow table into a Spark DataFrame (also printed), so both figures are the validation work
on rows already in the engine. With `--spark` it also checks the two outputs are equal.

    python bench/silver_validate.py                          # 1M weather and 1M taxi records
    python bench/silver_validate.py --records 200000 --spark # beside Spark (needs its jars)
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from itertools import islice

import pyarrow as pa
from rich.console import Console
from rich.progress import track

console = Console()


def bronze_table(source: str, records: int, *, bad_rate: float = 0.01, seed: int = 7) -> pa.Table:
    """`records` replay messages of `source` as a bronze table (4 partitions, offsets in order)."""
    import polars as pl

    from ingest.datasets import read_source
    from ingest.replay import build_messages, prepare_frame
    from periscope import get_settings
    from periscope.contracts import get_contract
    from spark_streaming.bronze_direct import BRONZE_ARROW_SCHEMA

    contract = get_contract(source)
    frame = prepare_frame(read_source(source, get_settings().data_dir), contract)
    good = round(records * (1 - bad_rate))
    if frame.height < good:  # repeat the history (validation does not care about repeats)
        frame = pl.concat([frame] * (good // frame.height + 1))
    messages = list(
        islice(
            track(
                build_messages(frame.head(good), contract, bad_rate=bad_rate, seed=seed),
                total=records,
                description=f"{source}: building {records:,} records",
                console=console,
                transient=True,
            ),
            records,
        )
    )
    n = len(messages)
    now = datetime.now(UTC)
    return pa.Table.from_arrays(
        [
            pa.array([m.key for m in messages], pa.binary()),
            pa.array([m.value for m in messages], pa.binary()),
            pa.array([contract.topic("raw")] * n),
            pa.array([i % 4 for i in range(n)], pa.int32()),
            pa.array([i // 4 for i in range(n)], pa.int64()),
            pa.array([now] * n, pa.timestamp("us", "UTC")),
            pa.array([now] * n, pa.timestamp("us", "UTC")),
            pa.array([now.date()] * n, pa.date32()),
        ],
        schema=BRONZE_ARROW_SCHEMA,
    )


def time_arrow(bronze: pa.Table, source: str, repeat: int) -> tuple[float, float, pa.Table]:
    """(best wall seconds, CPU seconds of that run, the result) of `validate_arrow`."""
    from periscope.contracts import get_contract
    from spark_streaming.silver.validate_arrow import validate_arrow

    contract = get_contract(source)
    best, cpu, result = float("inf"), 0.0, None
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = validate_arrow(bronze, contract)
        took = time.perf_counter() - started
        if took < best:
            best, cpu = took, time.process_time() - cpu_started
    assert result is not None
    return best, cpu, result


def spark_validated(spark, bronze: pa.Table, source: str) -> tuple[float, float, pa.Table]:
    """(seconds to load the table into Spark, seconds of validate + toArrow, the result)."""
    from pyspark.sql import functions as F

    from periscope.contracts import get_contract
    from spark_streaming.silver.columns import observation_columns
    from spark_streaming.silver.validate import validate

    contract = get_contract(source)
    started = time.perf_counter()
    try:
        frame = spark.createDataFrame(bronze)
    except (TypeError, ValueError):  # a pyspark that takes no Arrow table: through pandas
        frame = spark.createDataFrame(bronze.to_pandas())
    frame = frame.cache()
    frame.count()
    loaded = time.perf_counter() - started
    extra = ["reason", "reason_detail"]
    parsed = [c for c in observation_columns(contract) if c not in extra]
    good = F.col("reason").isNull()
    started = time.perf_counter()
    result = (
        validate(frame, contract)
        .select(
            *parsed,
            *extra,
            F.when(~good, F.col("key")).alias("key"),
            F.when(~good, F.col("value")).alias("value"),
        )
        .toArrow()
    )
    took = time.perf_counter() - started
    frame.unpersist()
    return loaded, took, result


def _equal(ours: pa.Table, theirs: pa.Table) -> bool:
    """Same names, types and values (Table.equals also compares nullability, which Spark's
    toArrow sets per column and validate_arrow does not)."""
    order = [("partition", "ascending"), ("offset", "ascending")]
    ours, theirs = ours.sort_by(order), theirs.sort_by(order)
    names = [(f.name, f.type) for f in ours.schema] == [(f.name, f.type) for f in theirs.schema]
    return names and all(a.equals(b) for a, b in zip(ours.columns, theirs.columns, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records per source")
    parser.add_argument("--sources", nargs="+", default=["weather", "taxi"])
    parser.add_argument("--repeat", type=int, default=3, help="validate_arrow runs (best)")
    parser.add_argument("--spark", action="store_true", help="time Spark's path beside it")
    args = parser.parse_args()

    spark = None
    if args.spark:
        from spark_streaming.session import build_spark_session

        started = time.perf_counter()
        spark = build_spark_session(
            "bench-silver-validate",
            conf={"spark.ui.enabled": "false", "spark.sql.execution.arrow.pyspark.enabled": "true"},
        )
        spark.sparkContext.setLogLevel("ERROR")
        console.print(f"spark: JVM + session start-up {time.perf_counter() - started:.1f} s")
    for source in args.sources:
        started = time.perf_counter()
        bronze = bronze_table(source, args.records)
        built = time.perf_counter() - started
        console.print(f"{source}: {bronze.num_rows:,} bronze rows built in {built:.1f} s")
        took, cpu, ours = time_arrow(bronze, source, args.repeat)
        quarantined = bronze.num_rows - ours["reason"].null_count
        console.print(
            f"{source}: validate_arrow {took:.2f} s = {bronze.num_rows / took:,.0f} records/s, "
            f"{cpu:.2f} CPU-s = {bronze.num_rows / cpu:,.0f} records per CPU-second "
            f"(best of {args.repeat}; {quarantined:,} quarantined)"
        )
        if spark is not None:
            loaded, spark_took, theirs = spark_validated(spark, bronze, source)
            console.print(
                f"{source}: spark validate + toArrow {spark_took:.2f} s = "
                f"{bronze.num_rows / spark_took:,.0f} records/s "
                f"(table into Spark first: {loaded:.1f} s, not counted)"
            )
            console.print(f"{source}: outputs equal: {_equal(ours, theirs)}")
    if spark is not None:
        spark.stop()


if __name__ == "__main__":
    main()
