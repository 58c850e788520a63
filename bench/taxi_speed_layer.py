"""The taxi speed layer: trip scoring throughput, and Kafka timestamp -> prediction in gold.

Throughput: a trip regressor is trained on the real January 2023 month and registered as
champion in a temporary MLflow store; a backlog of real trips (the month repeated, as silver
keeps them) is scored by the `periscope score` actor pool (`ScorerPool.score_events`, 2 Ray
actors) and by one process without Ray; prints trips/s (target >= 50,000 with 2 actors).

Latency: real trips are produced live at `--rate` trips/s (pickup time = now, a fresh trip id
each), bronze and silver run continuously (`--engine direct`, the default: the direct engines,
each in a process of its own; `--engine spark`: two queries of one Spark application), and the scorer
(`run_scoring`, windows and events) runs beside them. A trip's latency is the commit time of
the gold MERGE that first covered its silver batch (the `periscope.silver_through` of the
gold table's commits) minus its Kafka timestamp; prints p50/p95/max (target p95 <= 5 s).
Uses its own topics (a copy of the taxi contract under a fresh name) and a temporary lake;
needs the local services (`periscope services up`).

    nice -n 10 .venv/bin/python bench/taxi_speed_layer.py --rate 500 --duration 60
    nice -n 10 .venv/bin/python bench/taxi_speed_layer.py --skip-latency   # throughput only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
from _direct_engines import start_direct, stop_direct  # bench/, beside this script
from rich.console import Console

from ingest.datasets import read_taxi
from ingest.producer import encode_record
from ml import trips
from ml.gold import event_predictions_path, event_rows, run_scoring
from ml.gold.actors import ScorerPool
from ml.gold.events import predict_events
from ml.ray_session import ray_session
from ml.registry import EVENT_KINDS, Registry
from ml.training.trips import read_zone_lookup
from periscope import get_settings
from periscope.contracts import TAXI, SourceContract
from periscope.lake import read_delta, row_count_or_zero
from periscope.messages import Publisher
from periscope.settings import Settings

console = Console(stderr=True)


def _accepted_month(settings: Settings) -> pd.DataFrame:
    """The month's trips that silver accepts, as the reader gives them (pickup time in UTC)."""
    month = read_taxi(Path(settings.data_dir)).to_pandas()
    return month[trips.silver_accepts(month)].reset_index(drop=True)


def train_champion(settings: Settings, contract: SourceContract, month: pd.DataFrame) -> int:
    """Fit the trip regressor on the month (the production candidates), register it as the
    bench source's `<source>_trip` champion; returns its version."""
    started = time.perf_counter()
    training = trips.fit_trip_models(month, read_zone_lookup(settings))
    console.print(
        f"trained the trip model in {time.perf_counter() - started:.0f} s "
        f"(chosen: {training.model.chosen})"
    )
    registry = Registry(settings)
    with tempfile.TemporaryDirectory() as tmp:
        training.model.save(Path(tmp))
        info = registry.log_model(
            source=contract.name,
            kind="trip",
            directory=Path(tmp),
            params={},
            metrics={},
            tags={"bench": "taxi_speed_layer"},
        )
    registry.set_champion(contract.name, "trip", info.version)
    return info.version


def as_silver(month: pd.DataFrame, size: int) -> pd.DataFrame:
    """`size` observations as silver keeps them (naive UTC event_time, kafka_timestamp), the
    month repeated under fresh trip ids."""
    picks = np.arange(size) % len(month)
    backlog = month.iloc[picks].reset_index(drop=True)
    event_time = pd.to_datetime(backlog.pop(TAXI.event_time_field), utc=True)
    return backlog.assign(
        event_time=event_time.dt.tz_localize(None),
        trip_id=[f"b{i}" for i in range(size)],
        kafka_timestamp=pd.Timestamp.now(tz=UTC),
    )


def throughput(settings: Settings, contract: SourceContract, backlog: pd.DataFrame, actors: int):
    """Trips/s of the actor pool on the backlog (best of 3), and of one process without Ray."""
    registry = Registry(settings)
    info = registry.resolve(contract.name, "trip", "champion")
    assert info is not None
    model = registry.load(info)
    # What the actors run per slice, in this process: wall time and CPU time (the machine is
    # shared, so CPU time tells what two free cores would give).
    started, cpu = time.perf_counter(), time.process_time()
    predicted = predict_events(model, backlog, contract.event_predictions)
    event_rows(backlog, predicted, contract, model="bench", version=1, scored_at=datetime.now(UTC))
    single = len(backlog) / (time.perf_counter() - started)
    per_cpu_second = len(backlog) / (time.process_time() - cpu)
    with ray_session(settings, workers=actors):
        pool = ScorerPool(settings, actors)
        version = pool.sync_event_model(contract.name, "trip", registry)
        assert version is not None
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            rows = pool.score_events(contract, backlog, datetime.now(UTC))
            runs.append(time.perf_counter() - started)
            assert rows.num_rows == len(backlog)
    return {
        "backlog_trips": len(backlog),
        "actors": actors,
        "pool_trips_per_s": round(len(backlog) / min(runs)),
        "pool_seconds_runs": [round(r, 2) for r in runs],
        "one_process_trips_per_s": round(single),
        "one_process_trips_per_cpu_s": round(per_cpu_second),
    }


# --- latency --------------------------------------------------------------------------------
def _produce(
    settings: Settings, topic: str, records: list[dict], rate: int, duration: float, sent: Any
) -> None:
    """Send `rate` trips per second in 10 ticks a second, pickup time = now, fresh ids."""
    publisher = Publisher(settings, client_id="bench-taxi-load", timeout_s=30)
    tick, per_tick = 0.1, max(1, rate // 10)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < duration:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        messages = []
        for _ in range(per_tick):
            record = records[n % len(records)] | {
                TAXI.event_time_field: now,
                "trip_id": f"live-{n}",
            }
            messages.append((str(record["pu_location_id"]).encode(), encode_record(record)))
            n += 1
        publisher.publish(topic, messages)
        time.sleep(max(0.0, started + (n / per_tick) * tick - time.monotonic()))
    publisher.close()
    sent.value = n


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def commit_times(path: str) -> list[tuple[int, float]]:
    """(silver batch scored through, commit time in s) of each gold commit, oldest first."""
    from deltalake import DeltaTable

    marks = [
        (int(c["periscope.silver_through"]), c["timestamp"] / 1000)
        for c in DeltaTable(path).history()
        if "periscope.silver_through" in c
    ]
    return sorted(marks, key=lambda m: m[1])


def latency(
    settings: Settings,
    contract: SourceContract,
    month: pd.DataFrame,
    *,
    rate: int,
    duration: float,
    warmup: float,
    actors: int,
    engine: str,
    verbose: bool = False,
) -> dict[str, Any]:
    from kafka import KafkaAdminClient

    from periscope.topics import create_topics, topic_specs
    from spark_streaming.bronze import BronzeTarget, start_bronze
    from spark_streaming.session import build_spark_session
    from spark_streaming.silver import SilverTables, start_silver

    # The trips as replay sends them (the contract's wire fields with the reader's types: a
    # count stays an integer, the duration is there); _produce stamps pickup time and id.
    accepted = month["trip_id"].head(20_000).tolist()
    records = (
        read_taxi(Path(settings.data_dir))
        .filter(pl.col("trip_id").is_in(accepted))
        .select(TAXI.wire_fields)
        .drop(TAXI.event_time_field)
        .to_dicts()
    )
    create_topics(settings, topic_specs(settings, [contract]))
    spark = None
    if engine == "spark":
        spark = build_spark_session(
            "bench-taxi-speed-layer", settings=settings, conf={"spark.ui.enabled": "false"}
        )
        spark.sparkContext.setLogLevel("ERROR")
    tables = SilverTables.for_contract(settings, contract)
    stop = threading.Event()
    scorer = threading.Thread(
        target=run_scoring,
        args=(settings, [contract]),
        kwargs={"available_now": False, "actors": actors, "stop": stop},
        daemon=True,
    )
    gold = event_predictions_path(settings, contract)
    try:
        if spark is not None:
            bronze = start_bronze(spark, settings, BronzeTarget.for_contract(settings, contract))
            silver = start_silver(spark, settings, contract, tables)
        else:
            engines_stop, engines = start_direct(settings, contract, verbose=verbose)
        scorer.start()
        started = time.time()
        context = multiprocessing.get_context("spawn")
        sent: Synchronized = context.Value("q", 0)  # type: ignore[type-arg]
        load = context.Process(
            target=_produce,
            args=(settings, contract.topic("raw"), records, rate, duration, sent),
            daemon=True,
        )
        load.start()
        load.join()
        # Let the chain catch up with everything produced (or give up after a while).
        deadline = time.monotonic() + 180
        scored = 0
        while time.monotonic() < deadline:
            try:
                scored = read_delta(gold, ["trip_id"]).num_rows
            except Exception:  # noqa: BLE001 - gold may not exist yet
                scored = 0
            if scored >= sent.value:
                break
            time.sleep(1)
        finished = time.time()
        stop.set()
        if spark is not None:
            bronze.stop()
            silver.stop()
        else:
            stop_direct(engines_stop, engines)
        scorer.join(timeout=60)

        rows = read_delta(gold, ["trip_id", "kafka_timestamp"]).to_pandas()
        batches = read_delta(tables.observations, ["trip_id", "silver_batch_id"]).to_pandas()
        rows = rows.merge(batches, on="trip_id")
        commits = commit_times(gold)
        marks = np.array([m for m, _ in commits])
        times = np.array([t for _, t in commits])
        # The first commit whose mark reaches the trip's silver batch made it visible.
        first = np.array(
            [
                np.flatnonzero(marks >= b)[0] if (marks >= b).any() else -1
                for b in rows["silver_batch_id"]
            ]
        )
        kafka = rows["kafka_timestamp"].map(lambda t: t.timestamp()).to_numpy()
        # Warm-up counts from the first trip produced: the load process's own start-up (a
        # spawned interpreter importing the stack) must not eat it.
        keep = (first >= 0) & (kafka >= kafka.min() + warmup)
        latencies = (times[first[keep]] - kafka[keep]).tolist()
        return {
            "engine": engine,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "rate_target_per_s": rate,
            "trips_sent": int(sent.value),
            "trips_in_bronze": row_count_or_zero(tables.bronze),
            "trips_in_silver": row_count_or_zero(tables.observations),
            "trips_scored": scored,
            "sustained_rate_per_s": round(scored / (finished - started)),
            "gold_commits": len(commits),
            "measured_trips": len(latencies),
            "latency_p50_s": round(_percentile(latencies, 0.5), 2) if latencies else None,
            "latency_p95_s": round(_percentile(latencies, 0.95), 2) if latencies else None,
            "latency_max_s": round(max(latencies), 2) if latencies else None,
        }
    finally:
        stop.set()
        if spark is not None:
            spark.stop()
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        admin.delete_topics(list(contract.topics.values()))
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=500, help="trips per second produced live")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of steady input")
    parser.add_argument(
        "--warmup",
        type=float,
        default=15.0,
        help="seconds of input left out of figures, from the first trip produced",
    )
    parser.add_argument("--backlog", type=int, default=300_000, help="trips in the backlog")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors in the scoring pool")
    parser.add_argument("--trigger", default="0 seconds", help="bronze/silver micro-batch interval")
    parser.add_argument(
        "--engine",
        choices=["direct", "spark"],
        default="direct",
        help="bronze and silver: the direct engines, each in a process of its own (one "
        "machine's default), or two queries of one Spark application",
    )
    parser.add_argument("--skip-latency", action="store_true", help="throughput only")
    parser.add_argument(
        "--verbose", action="store_true", help="direct engines: log every silver batch"
    )
    parser.add_argument("--skip-throughput", action="store_true", help="latency only")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="periscope-taxi-speed-"))
    settings = get_settings().model_copy(
        update={
            "lake_root": str(root / "lake"),
            "local_dir": root,
            "mlflow_tracking_uri": "",
            "stream_trigger_interval": args.trigger,
            "score_poll_interval_s": 0.2,
        }
    )
    contract = dataclasses.replace(TAXI, name=f"bench{uuid.uuid4().hex[:6]}")
    # The registry knows which sources have a trip model by name; the bench's copy is one.
    EVENT_KINDS["trip"] = (*EVENT_KINDS["trip"], contract.name)
    figures: dict[str, Any] = {}
    try:
        month = _accepted_month(settings)
        figures["event_model_version"] = train_champion(settings, contract, month)
        if not args.skip_throughput:
            console.print(f"scoring a backlog of {args.backlog:,} trips")
            figures["throughput"] = throughput(
                settings, contract, as_silver(month, args.backlog), args.actors
            )
            console.print(json.dumps(figures["throughput"]))
        if not args.skip_latency:
            console.print(f"producing {args.rate} trips/s for {args.duration:.0f} s")
            # Ray started here, in the main thread, before Spark: the scorer's thread joins it.
            with ray_session(settings, workers=args.actors):
                figures["latency"] = latency(
                    settings,
                    contract,
                    month,
                    rate=args.rate,
                    duration=args.duration,
                    warmup=args.warmup,
                    actors=args.actors,
                    engine=args.engine,
                    verbose=args.verbose,
                )
        print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
