"""Reconciliation: every record accounted for between Kafka, bronze, silver and gold.

Per source: records in Kafka (`<source>-raw` end offsets), bronze rows, and what silver made
of the bronze rows it processed: observations + quarantined + duplicates must equal them, and
each table must hold what silver's batch ledger says it wrote. Records too late for features
are counted (they stay in observations). Gold, once it exists, holds one prediction per silver
feature window it has scored: when its mark has reached silver's latest batch, windows and
predictions must be equal. Reads Delta logs with delta-rs: no Spark needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from periscope.contracts import SourceContract
from periscope.settings import Settings

__all__ = ["SourceAudit", "audit_source", "reconcile"]

SILVER_OUTPUTS = ("observations", "quarantined", "duplicates")


@dataclass
class SourceAudit:
    """The counts of one source and what does not add up."""

    source: str
    kafka: int
    bronze: int
    processed: int  # bronze rows silver has processed (its ledger)
    tables: dict[str, int]  # rows in observations / quarantined / duplicates / late tables
    ledger: dict[str, int]  # the same, as silver's batches recorded them
    windows: int = 0  # silver feature windows
    latest_batch: int | None = None  # the newest silver batch id among them
    gold: int | None = None  # gold predictions (None: no gold table yet)
    gold_mark: int | None = None  # the last silver batch gold has scored
    problems: list[str] = field(default_factory=list)

    @property
    def gold_caught_up(self) -> bool:
        return self.latest_batch is None or (
            self.gold_mark is not None and self.gold_mark >= self.latest_batch
        )

    @property
    def not_landed(self) -> int:
        return self.kafka - self.bronze

    @property
    def not_processed(self) -> int:
        return self.bronze - self.processed


def reconcile(audit: SourceAudit, *, require_caught_up: bool = False) -> SourceAudit:
    """Fill `audit.problems` with every equation that fails (pure: counts in, verdicts out)."""
    problems = audit.problems
    if audit.bronze > audit.kafka:
        problems.append(
            f"bronze has {audit.bronze} rows but Kafka only ever had {audit.kafka} records"
        )
    if audit.processed > audit.bronze:
        problems.append(f"silver processed {audit.processed} rows but bronze has {audit.bronze}")
    outputs = sum(audit.tables[name] for name in SILVER_OUTPUTS)
    if outputs != audit.processed:
        problems.append(
            f"observations + quarantined + duplicates = {outputs}, but silver processed {audit.processed} bronze rows"
        )
    for name, rows in audit.tables.items():
        if rows != audit.ledger.get(name, 0):
            problems.append(
                f"{name}: table has {rows} rows, silver's ledger says {audit.ledger.get(name, 0)}"
            )
    if audit.tables["late"] > audit.tables["observations"]:
        problems.append("more late rows than observations")
    if require_caught_up and (audit.not_landed or audit.not_processed):
        problems.append(
            f"not caught up: {audit.not_landed} not in bronze, {audit.not_processed} not processed"
        )
    if audit.gold is not None:
        if audit.gold > audit.windows:
            problems.append(
                f"gold has {audit.gold} predictions for {audit.windows} silver feature windows"
            )
        elif audit.gold_caught_up and audit.gold != audit.windows:
            problems.append(
                f"gold has scored every silver batch but holds {audit.gold} predictions "
                f"for {audit.windows} feature windows"
            )
        if require_caught_up and not audit.gold_caught_up:
            problems.append(
                f"gold not caught up: scored through silver batch {audit.gold_mark}, "
                f"silver is at {audit.latest_batch}"
            )
    return audit


def _ledger(path: str) -> dict[str, int]:
    from deltalake.exceptions import TableNotFoundError

    from periscope.lake import read_delta

    names = ["bronze_rows", "observations", "quarantined", "duplicates", "late"]
    try:
        table = read_delta(path, names)
    except TableNotFoundError:
        return dict.fromkeys(names, 0)
    return {name: int(sum(v or 0 for v in table.column(name).to_pylist())) for name in names}


def audit_source(
    settings: Settings, contract: SourceContract, *, require_caught_up: bool = False
) -> SourceAudit:
    """Count everything for one source and reconcile it."""
    from periscope.lake import row_count_or_zero
    from periscope.topics import records_written

    def path(layer: str, entity: str) -> str:
        return settings.lake_path(contract.table(layer, entity))  # type: ignore[arg-type]

    ledger = _ledger(path("silver", "batches"))
    windows, latest_batch = _feature_windows(path("silver", "features"))
    gold, gold_mark = _gold(path("gold", "predictions"))
    audit = SourceAudit(
        source=contract.name,
        kafka=records_written(settings, contract.topic("raw")),
        bronze=row_count_or_zero(path("bronze", "raw")),
        processed=ledger.pop("bronze_rows"),
        tables={
            "observations": row_count_or_zero(path("silver", "observations")),
            "quarantined": row_count_or_zero(path("silver", "quarantine")),
            "duplicates": row_count_or_zero(path("silver", "duplicates")),
            "late": row_count_or_zero(path("silver", "late")),
        },
        ledger=ledger,
        windows=windows,
        latest_batch=latest_batch,
        gold=gold,
        gold_mark=gold_mark,
    )
    return reconcile(audit, require_caught_up=require_caught_up)


def _feature_windows(path: str) -> tuple[int, int | None]:
    """Silver feature windows and the newest silver batch id among them."""
    import pyarrow.compute as pc
    from deltalake.exceptions import TableNotFoundError

    from periscope.lake import read_delta

    try:
        batch_ids = read_delta(path, ["silver_batch_id"]).column("silver_batch_id")
    except TableNotFoundError:
        return 0, None
    latest = pc.max(batch_ids).as_py()
    return len(batch_ids), None if latest is None else int(latest)


def _gold(path: str) -> tuple[int | None, int | None]:
    """Gold predictions and gold's mark (None, None when there is no gold table yet)."""
    from deltalake import DeltaTable

    from periscope.lake import GOLD_SCORE_APP_ID, delta_row_count

    if not DeltaTable.is_deltatable(path):
        return None, None
    return delta_row_count(path), DeltaTable(path).transaction_version(GOLD_SCORE_APP_ID)
