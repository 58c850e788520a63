"""Silver latency: Kafka timestamp -> the record's windows visible in `silver/<source>_features`.

Produces a steady stream (default 1,000 records/s across 1,000 stations, event time = now)
from a process of its own, runs bronze and silver continuously, and prints p50/p95/max
latency and the sustained rate. `--engine spark` (the default): bronze and silver as two
queries of one Spark application. `--engine direct`: the direct bronze writer and the direct
silver engine, each in a process of its own (as `periscope up` runs them). A record's latency
is the commit time of the silver batch that upserted its windows (the features table's MERGE
commit for that batch, from the Delta log) minus its Kafka timestamp. Uses its own topics (a
copy of the weather contract with 5-minute windows sliding by 1 minute and a 10-minute
watermark) and a temporary lake.
Needs the local services: `periscope services up`.

    python bench/silver_latency.py --rate 1000 --stations 1000 --duration 60
    python bench/silver_latency.py --engine direct --duration 90
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized

from _direct_engines import start_direct, stop_direct  # bench/, beside this script
from deltalake import DeltaTable

from ingest.producer import encode_record
from periscope import get_settings
from periscope.contracts import WEATHER, WindowSpec
from periscope.lake import read_delta
from periscope.messages import Publisher
from periscope.topics import create_topics, topic_specs
from spark_streaming.bronze import BronzeTarget, start_bronze
from spark_streaming.session import build_spark_session
from spark_streaming.silver import SilverTables, start_silver


def _produce(
    settings, topic: str, rate: int, stations: int, duration: float, sent: Synchronized
) -> None:
    """Send `rate` records per second in 10 ticks a second, event time = now."""
    publisher = Publisher(settings, client_id="bench-load", timeout_s=30)
    tick, per_tick = 0.1, max(1, rate // 10)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < duration:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        messages = []
        for _ in range(per_tick):
            station = f"station_{n % stations:04d}"
            record = {
                "station_id": station,
                "timestamp": now,
                "temperature": 10.0 + (n % 97) / 10,
                "humidity": 40.0 + n % 53,
                "pressure": 1000.0 + n % 31,
                "wind_speed": (n % 17) / 2,
                "wind_direction": float(n % 360),
            }
            messages.append((station.encode(), encode_record(record)))
            n += 1
        publisher.publish(topic, messages)
        time.sleep(max(0.0, started + (n / per_tick) * tick - time.monotonic()))
    publisher.close()
    sent.value = n


def produce(settings, topic: str, rate: int, stations: int, duration: float) -> int:
    """Run the load for `duration` seconds in a process of its own, as ingest runs beside the
    stages (sensors would not share the stages' interpreter); returns the records sent.

    The load generator is not what is measured (latency starts at the Kafka timestamp), so it
    publishes through librdkafka: a kafka-python producer in the measured process took a
    third of a core and the GIL from the stages' drivers.
    """
    context = multiprocessing.get_context("spawn")
    sent = context.Value("q", 0)
    process = context.Process(
        target=_produce, args=(settings, topic, rate, stations, duration, sent), daemon=True
    )
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"the load generator failed (exit code {process.exitcode})")
    return int(sent.value)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    """p50 / p95 / max in seconds (None when nothing was measured); shared by the benches."""
    if not latencies:
        return dict.fromkeys(("latency_p50_s", "latency_p95_s", "latency_max_s"))
    return {
        "latency_p50_s": round(_percentile(latencies, 0.50), 2),
        "latency_p95_s": round(_percentile(latencies, 0.95), 2),
        "latency_max_s": round(max(latencies), 2),
    }


def delete_topics(settings, contract) -> None:
    """Remove a bench contract's topics."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    admin.delete_topics(list(contract.topics.values()))
    admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=1000, help="records per second")
    parser.add_argument("--stations", type=int, default=1000, help="distinct stations (keys)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of steady input")
    parser.add_argument(
        "--warmup", type=float, default=20.0, help="seconds excluded from the figures"
    )
    parser.add_argument(
        "--trigger", default="0 seconds", help="micro-batch interval of both queries"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log every silver batch with its phase timings"
    )
    parser.add_argument(
        "--engine",
        choices=["spark", "direct"],
        default="spark",
        help="spark: bronze and silver queries in one Spark application; direct: the direct "
        "bronze writer and the direct silver engine, each in its own process",
    )
    args = parser.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
        logging.getLogger("spark_streaming.silver").setLevel(logging.INFO)

    lake = tempfile.mkdtemp(prefix="periscope-latency-")
    settings = get_settings().model_copy(
        update={"lake_root": lake, "stream_trigger_interval": args.trigger}
    )
    contract = dataclasses.replace(
        WEATHER, name=f"bench{uuid.uuid4().hex[:6]}", window=WindowSpec()
    )
    create_topics(settings, topic_specs(settings, [contract]))
    tables = SilverTables.for_contract(settings, contract)
    spark = None
    if args.engine == "spark":
        spark = build_spark_session(
            "bench-silver-latency", settings=settings, conf={"spark.ui.enabled": "false"}
        )
        spark.sparkContext.setLogLevel("ERROR")
    try:
        if spark is not None:
            bronze = start_bronze(spark, settings, BronzeTarget.for_contract(settings, contract))
            silver = start_silver(spark, settings, contract, tables)
        else:
            stop, processes = start_direct(settings, contract, verbose=args.verbose)
            time.sleep(5)  # both processes started (imports), as the Spark queries have
        started = time.time()
        sent = produce(settings, contract.topic("raw"), args.rate, args.stations, args.duration)
        # Let silver catch up with everything produced (or give up after a while).
        deadline = time.monotonic() + 300
        processed = 0
        while time.monotonic() < deadline:
            try:
                processed = sum(
                    read_delta(tables.batches, ["bronze_rows"]).column("bronze_rows").to_pylist()
                )
            except Exception:  # noqa: BLE001 - the ledger may not exist yet
                processed = 0
            if processed >= sent:
                break
            time.sleep(1)
        finished = time.time()
        if spark is not None:
            bronze.stop()
            silver.stop()
        else:
            stop_direct(stop, processes)

        ledger = read_delta(tables.batches, ["batch_id"])["batch_id"].to_pylist()
        # When each batch's windows became visible: its features commit (MERGE) in the Delta log.
        visible = {
            int(commit["txnVersion"]): commit["timestamp"] / 1000
            for commit in DeltaTable(tables.features).history()
            if commit.get("operation") == "MERGE" and "txnVersion" in commit
        }
        observations = read_delta(
            tables.observations, ["kafka_timestamp", "silver_batch_id"]
        ).to_pylist()
        # Warm-up counts from the first record produced, not from the bench's start.
        cutoff = min(o["kafka_timestamp"].timestamp() for o in observations) + args.warmup
        latencies = [
            visible[o["silver_batch_id"]] - o["kafka_timestamp"].timestamp()
            for o in observations
            if o["kafka_timestamp"].timestamp() >= cutoff and o["silver_batch_id"] in visible
        ]
        figures = {
            "engine": args.engine,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "rate_target_per_s": args.rate,
            "stations": args.stations,
            "records_sent": sent,
            "records_processed": processed,
            "sustained_rate_per_s": round(processed / (finished - started)),
            "batches": len(ledger),
            "measured_records": len(latencies),
            **latency_summary(latencies),
        }
        print(json.dumps(figures, indent=2))
    finally:
        if spark is not None:
            spark.stop()
        delete_topics(settings, contract)
        shutil.rmtree(lake, ignore_errors=True)


if __name__ == "__main__":
    main()
