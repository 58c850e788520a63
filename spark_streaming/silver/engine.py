"""Which engine `silver run` uses when `PERISCOPE_SILVER_ENGINE` is `auto` (the default).

A lake stays with the engine that started it: each keeps its own checkpoint, and one taking
over the other's tables would count bronze twice (direct.py refuses, the Spark query refuses).
So `auto` looks at the lake first: a source the direct engine has run on stays direct, one the
Spark query has a checkpoint or batches for stays Spark. A fresh source goes to the direct engine
on one machine (no JVM to start, the faster one here) and to Spark when the settings point at a
cluster (a Spark master URL, an `s3a://` lake), which the direct engine does not serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from periscope.contracts import SourceContract
from periscope.errors import PeriscopeError
from periscope.settings import Settings
from spark_streaming.silver.process import SilverTables

Engine = Literal["direct", "spark"]

__all__ = ["Engine", "choose_engine", "lake_engine", "on_cluster"]


def on_cluster(settings: Settings) -> bool:
    """Do the settings point at a cluster (a Spark master URL or an s3a:// lake)?

    >>> on_cluster(Settings(spark_master="local[*]", lake_root="/tmp/lake"))
    False
    >>> on_cluster(Settings(spark_master="spark://head:7077", lake_root="/tmp/lake"))
    True
    >>> on_cluster(Settings(spark_master="local[2]", lake_root="s3a://bucket/lake"))
    True
    """
    return not settings.spark_master.startswith("local") or settings.lake_root.startswith("s3a:")


def lake_engine(tables: SilverTables) -> Engine | None:
    """The engine that has run on one source's silver tables; None for a fresh source."""
    from periscope.lake import row_count_or_zero

    if (Path(f"{tables.checkpoint}_direct") / "plans").is_dir():
        return "direct"
    # A Spark checkpoint without batches yet (stopped in its first batch) is Spark's all the same.
    if Path(tables.checkpoint).is_dir() or row_count_or_zero(tables.batches) > 0:
        return "spark"
    return None


def choose_engine(settings: Settings, contracts: list[SourceContract]) -> tuple[Engine, str]:
    """The engine for these sources under `auto`, and why (for the log)."""
    if on_cluster(settings):
        return "spark", "the settings point at a cluster"
    found = {c.name: lake_engine(SilverTables.for_contract(settings, c)) for c in contracts}
    used = {engine for engine in found.values() if engine}
    if len(used) > 1:
        by_source = ", ".join(f"{name}: {engine or 'fresh'}" for name, engine in found.items())
        raise PeriscopeError(
            f"silver: these sources' lakes are on different engines ({by_source}); run "
            "`periscope silver run --source <name>` for each, or pick one with --engine"
        )
    if used:
        engine = used.pop()
        return engine, f"the lake's silver tables were written by the {engine} engine"
    return "direct", "a fresh lake on one machine"
