"""The silver stream end to end, on both engines (`--engine spark|direct`): audit on demo-like
data, and a kill mid-stream with bronze compacted before the restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable, write_deltalake

from ingest.chaos import malformed_records, produce_chaos
from ingest.replay import replay
from periscope.audit import audit_source
from periscope.contracts import get_contract
from periscope.lake import delta_row_count, read_delta
from periscope.topics import create_topics
from spark_streaming.bronze import BronzeTarget, start_bronze
from spark_streaming.bronze_direct import ensure_bronze_table_direct
from spark_streaming.silver import SilverTables, run_silver_direct, start_silver

from .silver_helpers import ENGINES, bronze_arrow, wire

pytestmark = pytest.mark.integration
PERISCOPE = str(Path(sys.executable).parent / "periscope")


@pytest.mark.parametrize("engine", ENGINES)
def test_audit_adds_up_after_replay_chaos_bronze_and_silver(spark, services, tmp_path, engine):
    settings = services.model_copy(update={"lake_root": str(tmp_path / "lake")})
    create_topics(settings)
    replay(
        settings,
        "weather",
        limit=400,
        stations=["portland", "miami"],
        bad_rate=0.05,
        seed=3,
        progress=False,
    )
    produce_chaos(settings, "weather", count=14, seed=3, progress=False)
    # The same records again: a replay must not count twice in silver.
    replay(settings, "weather", limit=100, stations=["portland"], progress=False)

    contract = get_contract("weather")
    # Spark lands bronze for both engines: the direct engine reads Spark's Parquet and log here
    # (the kill test below reads delta-rs-written bronze, as the direct bronze writer writes it).
    bronze = start_bronze(
        spark, settings, BronzeTarget.for_contract(settings, contract), available_now=True
    )
    bronze.awaitTermination()
    if engine == "spark":
        processors: list = []
        silver = start_silver(
            spark,
            settings,
            contract,
            SilverTables.for_contract(settings, contract),
            available_now=True,
            processors=processors,
        )
        silver.awaitTermination()
        for processor in processors:  # its Kafka producer would outlive the test's broker
            processor.close()
        assert silver.exception() is None
    else:
        assert run_silver_direct(settings, [contract], available_now=True)["weather"] > 0

    audit = audit_source(settings, contract, require_caught_up=True)
    assert audit.problems == []
    assert audit.kafka == audit.bronze == audit.processed > 0
    assert audit.tables["duplicates"] >= 100  # the second portland replay
    assert audit.tables["quarantined"] >= 14 + 20
    assert (
        audit.tables["observations"] + audit.tables["quarantined"] + audit.tables["duplicates"]
        == audit.bronze
    )

    # Tampering is caught: one quarantined row written twice no longer adds up.
    tables = SilverTables.for_contract(settings, contract)
    write_deltalake(tables.quarantine, read_delta(tables.quarantine).slice(0, 1), mode="append")
    broken = audit_source(settings, contract)
    assert any("quarantined: table has" in p for p in broken.problems)
    assert any("observations + quarantined + duplicates" in p for p in broken.problems)


def _build_bronze(path: str, files: int, per_file: int, *, first_file: int = 0) -> None:
    """A bronze table of `files` commits: real-looking readings, repeats and malformed records
    (`first_file`: go on from a table built with that many files)."""
    contract = get_contract("weather")
    ensure_bronze_table_direct(path)
    chaos = malformed_records(contract, (first_file + files) * 2, seed=11)
    offset = first_file * (per_file + 3)
    for f in range(first_file, first_file + files):
        messages = [
            wire(f"s{i % 3}", f * per_file // 3 + i // 3, contract, temperature=float(i % 40))
            for i in range(per_file)
        ]
        messages += [wire("s0", f * per_file // 3, contract)]  # a repeat of a key in this file
        messages += [(k, v) for _, k, v in chaos[2 * f : 2 * f + 2]]
        write_deltalake(path, bronze_arrow(messages, first_offset=offset), mode="append")
        offset += len(messages)


def _silver(lake: Path, engine: str, *args: str, background: bool = False):
    env = {**os.environ, "PERISCOPE_LAKE_ROOT": str(lake)}
    command = [
        PERISCOPE,
        "silver",
        "run",
        "--engine",
        engine,
        "--source",
        "weather",
        "--max-files-per-trigger",
        "1",
        *args,
    ]
    if background:
        log = (lake / "silver.log").open("w")
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _snapshot(lake: Path) -> dict[str, list]:
    def rows(entity: str, drop=("processed_at", "silver_batch_id")) -> list:
        table = read_delta(str(lake / "silver" / f"weather_{entity}"))
        keep = [c for c in table.column_names if c not in drop]
        return sorted((tuple(sorted(r.items())) for r in table.select(keep).to_pylist()), key=repr)

    return {e: rows(e) for e in ("observations", "quarantine", "duplicates", "late", "features")}


# Bronze files per engine: the direct engine's batches take a few tens of milliseconds, so it
# needs more of them for the kill to land mid-stream.
FILES = {"spark": 4, "direct": 40}


@pytest.mark.parametrize("engine", ENGINES)
def test_kill_mid_stream_and_restart_gives_identical_tables(services, tmp_path, engine):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    files = FILES[engine]
    _build_bronze(str(killed / "bronze" / "weather_raw"), files=files, per_file=30)
    shutil.copytree(killed / "bronze", reference / "bronze")
    create_topics(services)

    process = _silver(killed, engine, background=True)
    ledger_log = killed / "silver" / "weather_batches" / "_delta_log"
    try:
        deadline = time.monotonic() + 300
        while not (ledger_log / f"{2:020d}.json").exists():  # table creation + 2 batches
            assert process.poll() is None, (killed / "silver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "silver made no progress"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole process group: Python and its JVM
        process.wait()
    assert 0 < delta_row_count(str(killed / "silver" / "weather_batches")) < files, (
        "the kill should land mid-stream"
    )
    # Maintenance compacts bronze while silver is down (dataChange=false files): the restart
    # must neither read the compacted rows again nor skip any.
    DeltaTable(str(killed / "bronze" / "weather_raw")).optimize.compact()

    _silver(killed, engine, "--available-now")
    # The reference is an uninterrupted run of the direct engine (no JVM to start) on the same
    # bronze, one file per batch as the killed run: the killed engine must end with exactly its
    # tables, which for Spark also proves the two engines write the same rows.
    _silver(reference, "direct", "--available-now")
    got, want = _snapshot(killed), _snapshot(reference)
    for entity in want:
        assert got[entity] == want[entity], entity
    features = read_delta(
        str(killed / "silver" / "weather_features"), ["station_id", "window_start"]
    )
    windows = [(r["station_id"], r["window_start"]) for r in features.to_pylist()]
    assert len(windows) == len(set(windows)) > 0

    settings = services.model_copy(update={"lake_root": str(killed)})
    audit = audit_source(settings, get_contract("weather"))
    # (Kafka is not the source of this synthetic bronze table, so only silver's equations apply.)
    assert audit.processed == audit.bronze == files * (30 + 1 + 2)
    assert (
        sum(audit.tables[k] for k in ("observations", "quarantined", "duplicates"))
        == audit.processed
    )
    assert all(audit.tables[k] == audit.ledger[k] for k in audit.ledger)
