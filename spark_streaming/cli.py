"""`periscope bronze ...` (mounted by periscope/cli.py through an entry point)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.console import Console

from periscope import get_settings
from periscope.cli_options import source_option
from periscope.contracts import CONTRACTS, SourceContract, get_contract
from periscope.output import Column, FormatOption, print_rows

__all__ = ["bronze_app"]

console = Console()

bronze_app = typer.Typer(
    help="Land Kafka records in the Delta bronze layer, exactly once.", no_args_is_help=True
)

Sources = Annotated[
    list[str] | None, source_option("Source to run (repeatable); default: every source.")
]


def _contracts(sources: list[str] | None) -> list[SourceContract]:
    # The --source option has checked the names against the contracts already.
    return [get_contract(name) for name in (sources or list(CONTRACTS))]


@bronze_app.command("run")
def bronze_run(
    source: Sources = None,
    available_now: Annotated[
        bool,
        typer.Option(
            "--available-now", help="Stop once caught up instead of running continuously."
        ),
    ] = False,
    max_offsets_per_trigger: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Records per micro-batch or commit (default: PERISCOPE_BRONZE_MAX_OFFSETS_PER_TRIGGER "
            "for spark, PERISCOPE_BRONZE_BATCH_RECORDS for direct).",
        ),
    ] = None,
    engine: Annotated[
        Literal["direct", "spark"] | None,
        typer.Option(
            help="direct: a librdkafka consumer group appending with delta-rs (one machine's "
            "fastest; run more processes to share the partitions). spark: the Spark job (a "
            "cluster's master URL). Default: PERISCOPE_BRONZE_ENGINE.",
        ),
    ] = None,
) -> None:
    """Stream `<source>-raw` into `lake/bronze/<source>_raw`, exactly once, with either engine."""
    from periscope.metrics import CONSUMER_GROUPS, serve_metrics

    settings = get_settings()
    # The direct writer's consumer group commits offsets: its lag is exported too.
    serve_metrics("bronze", settings, consumer_groups=[CONSUMER_GROUPS["bronze"]])
    if (engine or settings.bronze_engine) == "direct":
        from spark_streaming.bronze_direct import run_bronze_direct

        landed = run_bronze_direct(
            settings,
            _contracts(source),
            available_now=available_now,
            batch_records=max_offsets_per_trigger,
        )
    else:
        from spark_streaming.bronze import run_bronze

        landed = run_bronze(
            settings,
            _contracts(source),
            available_now=available_now,
            max_offsets_per_trigger=max_offsets_per_trigger,
        )
    for name, rows in landed.items():
        console.print(f"bronze {name}: {rows} records landed in this run")


_STATUS_COLUMNS = (
    Column("source"),
    Column("in kafka", justify="right", show=lambda n: f"{n:,}"),
    Column("in bronze", justify="right", show=lambda n: f"{n:,}"),
    Column("not landed", justify="right", show=lambda n: f"{n:,}"),
    Column("topic"),
    Column("table"),
)


@bronze_app.command("status")
def bronze_status(source: Sources = None, fmt: FormatOption = "table") -> None:
    """Per source: records written to Kafka, rows in bronze, and how many are not landed yet.

    Bronze starts from the earliest offset and fails on data loss, so once caught up its
    rows equal the sum of the topic's end offsets.
    """
    from periscope.lake import row_count_or_zero
    from periscope.topics import records_written
    from spark_streaming.bronze import BronzeTarget

    settings = get_settings()
    rows = []
    for contract in _contracts(source):
        target = BronzeTarget.for_contract(settings, contract)
        in_kafka = records_written(settings, target.topic)
        landed = row_count_or_zero(target.table_path)
        rows.append(
            (contract.name, in_kafka, landed, in_kafka - landed, target.topic, target.table_path)
        )
    print_rows(_STATUS_COLUMNS, rows, fmt=fmt, title="Kafka -> bronze", console=console)


silver_app = typer.Typer(
    help="Validate, deduplicate and window bronze records into the silver layer.",
    no_args_is_help=True,
)


@silver_app.command("run")
def silver_run(
    source: Sources = None,
    available_now: Annotated[
        bool,
        typer.Option(
            "--available-now", help="Stop once caught up with bronze instead of running on."
        ),
    ] = False,
    max_files_per_trigger: Annotated[
        int | None,
        typer.Option(
            min=1, help="Bronze files per micro-batch (default: Delta's 1000; direct: no limit)."
        ),
    ] = None,
    max_records_per_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="direct only: bronze records per batch, whole files (default: "
            "PERISCOPE_SILVER_BATCH_RECORDS).",
        ),
    ] = None,
    engine: Annotated[
        Literal["auto", "direct", "spark"] | None,
        typer.Option(
            help="direct: bronze's Delta log read with delta-rs, Arrow validation, no JVM (one "
            "machine's fastest). spark: the Spark query (a cluster's master URL). Both write the "
            "same tables; a lake stays with the engine that started it. auto: that engine, else "
            "direct on one machine and spark on a cluster. Default: PERISCOPE_SILVER_ENGINE "
            "(auto).",
        ),
    ] = None,
) -> None:
    """Stream `bronze/<source>_raw` into silver observations, quarantine and features."""
    from periscope.metrics import serve_metrics

    settings = get_settings()
    contracts = _contracts(source)
    chosen = engine or settings.silver_engine
    if chosen == "auto":
        from spark_streaming.silver.engine import choose_engine

        chosen, why = choose_engine(settings, contracts)
        console.print(f"silver: the {chosen} engine ({why})")
    serve_metrics("silver", settings)
    if chosen == "direct":
        from spark_streaming.silver.direct import run_silver_direct

        processed = run_silver_direct(
            settings,
            contracts,
            available_now=available_now,
            max_files_per_trigger=max_files_per_trigger,
            max_records=max_records_per_batch,
        )
    else:
        from spark_streaming.silver import run_silver

        processed = run_silver(
            settings,
            contracts,
            available_now=available_now,
            max_files_per_trigger=max_files_per_trigger,
        )
    for name, rows in processed.items():
        console.print(f"silver {name}: {rows} bronze records processed in this run")
