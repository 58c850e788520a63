"""The direct silver engine's reader, plan log and loop, on real delta-rs tables (no Spark, no
Kafka: publishing is off). Validation is a small stand-in kept here, so these tests check the
reading, planning and resuming, not the parsing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from periscope import get_settings
from periscope.contracts import get_contract
from periscope.errors import PeriscopeError
from periscope.lake import read_delta
from spark_streaming.bronze_direct import PartitionBuffer, bronze_rows, ensure_bronze_table_direct
from spark_streaming.silver import SilverTables
from spark_streaming.silver.columns import observation_columns
from spark_streaming.silver.direct import (
    BatchPlan,
    BronzeFile,
    BronzeLog,
    DirectSilver,
    PlanLog,
    Position,
    SilverCheckpointError,
    commit_files,
    follow_direct,
    plan_batch,
)
from spark_streaming.silver.engine import choose_engine, lake_engine

WEATHER = get_contract("weather")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
STAMP = pa.timestamp("us", tz="UTC")


def stand_in_validate(bronze: pa.Table, contract) -> pa.Table:
    """What `_validate` returns, for well-formed weather records or broken JSON only."""
    measures = [m.name for m in contract.measures]
    rows = []
    for row in bronze.to_pylist():
        try:
            record = json.loads(row["value"])
        except ValueError:
            record = None
        good = isinstance(record, dict)
        record = record if good else {}
        rows.append(
            {
                "station_id": record.get("station_id"),
                "event_time": datetime.fromisoformat(record["timestamp"]) if good else None,
                **{m: record.get(m) for m in measures},
                "qa_missing_fields": sum(record.get(m) is None for m in measures) if good else 0,
                "qa_out_of_range_fields": 0,
                **{c: row[c] for c in ("topic", "partition", "offset", "kafka_timestamp")},
                "reason": None if good else "malformed_json",
                "reason_detail": None if good else "value is not a JSON object",
                "key": None if good else row["key"],
                "value": None if good else row["value"],
            }
        )
    types = {"event_time": STAMP, "kafka_timestamp": STAMP, "partition": pa.int32()}
    types |= {c: pa.int32() for c in ("qa_missing_fields", "qa_out_of_range_fields")}
    types |= {m: pa.float64() for m in measures} | {"offset": pa.int64()}
    types |= {"key": pa.binary(), "value": pa.binary()}
    columns = [*observation_columns(contract), "reason", "reason_detail", "key", "value"]
    return pa.table({c: pa.array([r[c] for r in rows], types.get(c, pa.string())) for c in columns})


def _record(station: str, hour: int) -> bytes:
    timestamp = (T0 + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {"station_id": station, "timestamp": timestamp, "temperature": float(hour % 30)}
    ).encode()


class Bronze:
    """A bronze table written as the direct writer writes it, one commit per `land`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        ensure_bronze_table_direct(path)

    def land(self, n: int, *, stations: int = 3, broken: int = 0) -> None:
        buffer = PartitionBuffer()
        for _ in range(n):
            i = self.offset
            station = f"s{i % stations}"
            buffer.add(station.encode(), _record(station, i // stations), 0, i, 0)
            self.offset += 1
        for _ in range(broken):
            buffer.add(b"x", b"{not json", 0, self.offset, 0)
            self.offset += 1
        write_deltalake(
            DeltaTable(self.path), bronze_rows("t", buffer, datetime.now(UTC)), mode="append"
        )


@pytest.fixture
def lake(tmp_path):
    settings = get_settings().model_copy(update={"lake_root": str(tmp_path / "lake")})
    tables = SilverTables.for_contract(settings, WEATHER)
    return settings, tables, Bronze(tables.bronze)


def _engine(lake, **options) -> DirectSilver:
    settings, tables, _ = lake
    options.setdefault("validate", stand_in_validate)
    return DirectSilver(settings, WEATHER, tables, publish=False, **options)


def _run(engine: DirectSilver, *, available_now: bool = True) -> None:
    import threading

    try:
        follow_direct([engine], stop=threading.Event(), available_now=available_now)
    finally:
        engine.close()


def _offsets(tables) -> list[int]:
    """Every bronze offset silver accounted for (observations, quarantine, duplicates)."""
    found: list[int] = []
    for path in (tables.observations, tables.quarantine, tables.duplicates):
        found += read_delta(path, ["offset"])["offset"].to_pylist()
    return sorted(found)


def test_commit_files_skips_compaction_and_refuses_deletes():
    lines = [
        json.dumps({"add": {"path": "a.parquet", "dataChange": False, "partitionValues": {}}}),
        json.dumps({"remove": {"path": "b.parquet", "dataChange": False}}),
    ]
    assert commit_files(lines) == []
    with pytest.raises(SilverCheckpointError, match="append-only"):
        commit_files([json.dumps({"remove": {"path": "b.parquet", "dataChange": True}})])


def test_plans_take_whole_files_up_to_the_record_cap(lake):
    _, tables, bronze = lake
    for n in (40, 40, 40, 40):
        bronze.land(n)  # versions 1..4 (0 created the table)
    log = BronzeLog(tables.bronze)
    assert log.latest_version() == 4
    plan, behind = plan_batch(
        log, Position(1), batch_id=0, through_version=4, max_records=80, max_files=None
    )
    assert plan is not None
    assert [f.records for f in plan.files] == [40, 40] and plan.end == Position(3)
    assert behind == 2
    rest, behind = plan_batch(log, plan.end, batch_id=1, through_version=4, max_records=1000)
    assert rest is not None and rest.records == 80 and rest.end == Position(5) and behind == 0
    assert plan_batch(log, rest.end, batch_id=2, through_version=4, max_records=1000)[0] is None
    # The first start reads the snapshot, in a fixed order, the same when planned again.
    first, _ = plan_batch(log, Position(4, 0, True), batch_id=0, through_version=4, max_records=90)
    again, _ = plan_batch(log, Position(4, 0, True), batch_id=0, through_version=4, max_records=90)
    assert first == again and first is not None and first.end == Position(4, 2, True)
    # One file larger than the cap still makes a batch.
    single, _ = plan_batch(log, Position(1), batch_id=0, through_version=4, max_records=10)
    assert single is not None and single.records == 40


def test_plan_log_round_trip_and_resume(tmp_path):
    plans = PlanLog(str(tmp_path / "checkpoint"))
    assert plans.resume() == (None, 0, None) and plans.is_fresh()
    app = plans.app_id_suffix
    assert PlanLog(str(tmp_path / "checkpoint")).app_id_suffix == app  # stable per checkpoint
    plan = BatchPlan(
        0, Position(3, 0, True), Position(3, 2, True), (BronzeFile("d=1/a.parquet", 5, {"d": "1"}),)
    )
    plans.write_plan(plan)
    assert plans.resume() == (plan, 0, plan.start)  # planned, not done: replayed as it is
    plans.mark_done(0)
    assert plans.resume() == (None, 1, plan.end)
    assert not list((tmp_path / "checkpoint" / "plans").glob(".*.tmp"))


def test_every_bronze_row_once_in_batches_the_cap_bounds(lake):
    _, tables, bronze = lake
    bronze.land(100, broken=2)
    engine = _engine(lake, max_records=30)
    bronze.land(50)  # before the first plan: the snapshot it reads holds both files
    _run(engine)
    assert _offsets(tables) == list(range(152))
    ledger = read_delta(tables.batches).to_pylist()
    assert sum(b["bronze_rows"] for b in ledger) == 152
    assert len(ledger) == 2  # two whole files, each over the cap
    assert sum(b["quarantined"] for b in ledger) == 2


def test_a_crash_mid_batch_replays_the_same_plan_and_ends_like_an_uninterrupted_run(lake, tmp_path):
    settings, tables, bronze = lake
    for _ in range(4):
        bronze.land(30)
    calls = {"n": 0}

    def crash_on_third(rows, contract):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return stand_in_validate(rows, contract)

    engine = _engine(lake, max_records=30, validate=crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        _run(engine)
    plans = PlanLog(f"{tables.checkpoint}_direct")
    replay, next_id, _ = plans.resume()
    assert replay is not None and next_id == 2 and not plans.is_done(2)
    bronze.land(30)  # arrives while silver is down: not part of the replayed batch
    _run(_engine(lake, max_records=30))
    assert plans.last_plan() is not None and plans.last_plan().files != replay.files
    assert PlanLog(f"{tables.checkpoint}_direct").resume()[1] == 5

    reference_settings = settings.model_copy(update={"lake_root": str(tmp_path / "reference")})
    reference_tables = SilverTables.for_contract(reference_settings, WEATHER)
    reference = Bronze(reference_tables.bronze)
    for _ in range(4):
        reference.land(30)
    engine = DirectSilver(
        reference_settings,
        WEATHER,
        reference_tables,
        publish=False,
        validate=stand_in_validate,
        max_records=30,
    )
    _run(engine)
    reference.land(30)
    _run(
        DirectSilver(
            reference_settings,
            WEATHER,
            reference_tables,
            publish=False,
            validate=stand_in_validate,
            max_records=30,
        )
    )
    for name in ("observations", "duplicates", "features", "batches"):
        drop = ["processed_at"]
        got = read_delta(getattr(tables, name)).drop_columns(drop)
        want = read_delta(getattr(reference_tables, name)).drop_columns(drop)
        order = [(c, "ascending") for c in got.column_names if c not in drop][:3]
        assert got.sort_by(order).equals(want.sort_by(order)), name
    assert _offsets(tables) == list(range(150))


def test_a_batch_replayed_after_it_was_done_writes_nothing_new(lake):
    _, tables, bronze = lake
    bronze.land(60)
    _run(_engine(lake))
    before = {n: DeltaTable(getattr(tables, n)).version() for n in ("observations", "features")}
    plans = PlanLog(f"{tables.checkpoint}_direct")
    (plans.done / f"{0:020d}").unlink()  # as if the process died before marking it done
    _run(_engine(lake))
    after = {n: DeltaTable(getattr(tables, n)).version() for n in ("observations", "features")}
    assert after == before and _offsets(tables) == list(range(60))


def test_compaction_of_bronze_between_batches_neither_repeats_nor_skips_a_row(lake):
    _, tables, bronze = lake
    for _ in range(3):
        bronze.land(20)
    _run(_engine(lake, max_records=20, max_files=1))  # reads the snapshot: 60 rows
    for _ in range(3):
        bronze.land(20)
    engine = _engine(lake, max_files=1)
    assert engine.step() == 20  # one of the three new files
    DeltaTable(tables.bronze).optimize.compact()  # all six files into one (dataChange=false)
    bronze.land(20)
    _run(engine)
    assert _offsets(tables) == list(range(140))
    assert sum(read_delta(tables.batches, ["bronze_rows"])["bronze_rows"].to_pylist()) == 140


def test_a_fresh_checkpoint_on_tables_another_run_wrote_is_refused(lake):
    _, tables, bronze = lake
    bronze.land(10)
    _run(_engine(lake))
    with pytest.raises(SilverCheckpointError, match="already hold batches"):
        _engine(lake, checkpoint=str(tables.checkpoint) + "_other")


def test_available_now_stops_at_the_version_found_at_start(lake):
    _, tables, bronze = lake
    bronze.land(10)
    engine = _engine(lake)
    original_step = engine.step

    def step_then_land(**kwargs):
        rows = original_step(**kwargs)
        if rows:
            bronze.land(5)  # arrives during the run: left for the next one
        return rows

    engine.step = step_then_land  # type: ignore[method-assign]
    _run(engine)
    assert _offsets(tables) == list(range(10))
    _run(_engine(lake))
    assert _offsets(tables) == list(range(15))
    assert pc.max(read_delta(tables.batches)["batch_id"]).as_py() == 1


def test_auto_keeps_each_lake_with_its_engine_and_starts_fresh_ones_direct(lake):
    settings, tables, bronze = lake
    settings = settings.model_copy(update={"spark_master": "local[2]"})
    air = get_contract("air_quality")
    assert choose_engine(settings, [WEATHER])[0] == "direct"  # nothing written yet
    bronze.land(10)
    _run(_engine(lake))
    assert lake_engine(tables) == "direct"
    assert choose_engine(settings, [WEATHER, air])[0] == "direct"  # air quality is fresh
    # A Spark checkpoint (Spark writes it before its first batch) keeps a source with Spark.
    Path(SilverTables.for_contract(settings, air).checkpoint, "offsets").mkdir(parents=True)
    assert choose_engine(settings, [air]) == (
        "spark",
        "the lake's silver tables were written by the spark engine",
    )
    with pytest.raises(PeriscopeError, match="weather: direct, air_quality: spark"):
        choose_engine(settings, [WEATHER, air])
    # A cluster's settings go to Spark, which is the engine that serves them.
    cluster = settings.model_copy(update={"spark_master": "spark://head:7077"})
    assert choose_engine(cluster, [WEATHER])[0] == "spark"


def _land_hours(path: str, rows: list[tuple[int, str, int]], first_offset: dict[int, int]) -> None:
    """One bronze commit of (partition, station, hour) readings, offsets counted per partition."""
    buffer = PartitionBuffer()
    for partition, station, hour in rows:
        offset = first_offset.setdefault(partition, 0)
        first_offset[partition] += 1
        buffer.add(station.encode(), _record(station, hour), partition, offset, 0)
    write_deltalake(DeltaTable(path), bronze_rows("t", buffer, datetime.now(UTC)), mode="append")


def test_the_watermark_waits_for_the_partition_furthest_behind(lake):
    # A backfill reads its partitions at different paces: partition 1 is 40 hours behind
    # partition 0 when the second batch starts. The watermark (6 h) follows partition 1.
    _, tables, bronze = lake
    offsets: dict[int, int] = {}
    _land_hours(
        bronze.path,
        [(0, "a", h) for h in range(100)] + [(1, "b", h) for h in range(60)],
        offsets,
    )
    _land_hours(bronze.path, [(1, "b", h) for h in range(60, 100)], offsets)
    _run(_engine(lake, max_records=100))
    ledger = sorted(read_delta(tables.batches).to_pylist(), key=lambda b: b["batch_id"])
    assert [b["bronze_rows"] for b in ledger] == [160, 40]
    assert sum(b["late"] for b in ledger) == 0  # a global latest time would make 34 of 40 late
    assert ledger[1]["watermark"] == T0 + timedelta(hours=59 - 6)

    # Partition 1 then goes quiet for ten batches: partition 0 alone moves the watermark, and
    # a reading of partition 1 older than that is late. It never goes back down.
    for start in range(100, 210, 10):
        _land_hours(bronze.path, [(0, "a", h) for h in range(start, start + 10)], offsets)
    _land_hours(bronze.path, [(1, "b", 150)], offsets)
    _run(_engine(lake, max_records=10))  # a batch per commit
    ledger = sorted(read_delta(tables.batches).to_pylist(), key=lambda b: b["batch_id"])
    watermarks = [b["watermark"] for b in ledger[1:]]
    assert watermarks == sorted(watermarks)
    assert ledger[-1]["watermark"] == T0 + timedelta(hours=209 - 6)
    assert ledger[-1]["late"] == 1, [(b["bronze_rows"], b["watermark"], b["late"]) for b in ledger]
