"""When each source was last retrained (by either Dagster job): the health check's cooldown.

Kept in `<local_dir>/dagster/last_retrained.json`: the marts judge the last 7 days, so a new
champion's better forecasts take days to lift the figures, and retraining a breaching source
every hour meanwhile would only burn the machine (the same rule as `ml.health`'s scheduler).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

from periscope.settings import Settings

__all__ = ["COOLDOWN", "due_for_retrain", "read_retrained", "write_retrained"]

COOLDOWN = timedelta(hours=24)


def _path(settings: Settings) -> Path:
    return settings.local_dir / "dagster" / "last_retrained.json"


def read_retrained(settings: Settings) -> dict[str, datetime]:
    path = _path(settings)
    if not path.is_file():
        return {}
    return {s: datetime.fromisoformat(t) for s, t in json.loads(path.read_text()).items()}


def write_retrained(settings: Settings, retrained: Mapping[str, datetime]) -> None:
    path = _path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = read_retrained(settings) | dict(retrained)
    path.write_text(json.dumps({s: t.isoformat() for s, t in sorted(merged.items())}))


def due_for_retrain(
    breached: Iterable[str],
    last_retrained: Mapping[str, datetime],
    now: datetime,
    cooldown: timedelta = COOLDOWN,
) -> list[str]:
    """The breached sources not retrained within `cooldown` before `now`, sorted.

    >>> from datetime import UTC
    >>> now = datetime(2024, 1, 2, 12, tzinfo=UTC)
    >>> due_for_retrain(["weather", "taxi"], {"taxi": now - timedelta(hours=2)}, now)
    ['weather']
    """
    return sorted(
        s for s in set(breached) if s not in last_retrained or now - last_retrained[s] >= cooldown
    )
