"""What `periscope ps` adds to supervisord's view: each stage's last commit and its backlog.

Read from the lake and Kafka only (cheap: Delta logs, end offsets and two small columns,
the same counts as `periscope lake audit`):
- bronze: last commit to bronze/<source>_raw; behind = records in <source>-raw not yet in bronze
- silver: last commit to silver/<source>_observations; behind = bronze rows silver has not processed
- score: last commit to gold/<source>_predictions; behind = silver batches gold has not scored
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from periscope.settings import Settings

__all__ = ["StageProgress", "stage_progress"]

# stage -> (layer, entity) of the table it commits to
_OUTPUTS = {
    "bronze": ("bronze", "raw"),
    "silver": ("silver", "observations"),
    "score": ("gold", "predictions"),
}


@dataclass(frozen=True)
class StageProgress:
    last_commit: datetime | None
    behind: str  # with its unit, e.g. "1,204 records"; "?" when it could not be read


def _last_commit(path: str) -> datetime | None:
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(path):
        return None
    history = DeltaTable(path).history(1)
    return datetime.fromtimestamp(history[0]["timestamp"] / 1000, UTC) if history else None


def _newest(times: Sequence[datetime | None]) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


def stage_progress(settings: Settings, sources: Sequence[str]) -> dict[str, StageProgress]:
    """{bronze|silver|score: StageProgress} over `sources` (behind is "?" if Kafka is down)."""
    from periscope.audit import audit_source
    from periscope.contracts import get_contract

    contracts = [get_contract(source) for source in sources]
    last = {
        stage: _newest(
            [_last_commit(settings.lake_path(c.table(layer, entity))) for c in contracts]  # type: ignore[arg-type]
        )
        for stage, (layer, entity) in _OUTPUTS.items()
    }
    try:
        audits = [audit_source(settings, c) for c in contracts]
    except Exception:  # Kafka or a table unreadable: the backlog is unknown, the rest still shows
        return {stage: StageProgress(last[stage], "?") for stage in _OUTPUTS}
    unscored = sum(
        max(0, (a.latest_batch or 0) - (a.gold_mark if a.gold_mark is not None else -1))
        for a in audits
        if a.latest_batch is not None
    )
    return {
        "bronze": StageProgress(last["bronze"], f"{sum(a.not_landed for a in audits):,} records"),
        "silver": StageProgress(last["silver"], f"{sum(a.not_processed for a in audits):,} rows"),
        "score": StageProgress(last["score"], f"{unscored:,} silver batches"),
    }
