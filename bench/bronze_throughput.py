"""Bronze throughput: preload a backlog of M records, then land it in Delta with Spark.

Prints producer records/s (the ingest producer, librdkafka: encoded, sent and acknowledged)
and bronze records/s (landed and committed in Delta, measured from query start to the last
commit; Spark start-up excluded). Needs the local services: `periscope services up`. Uses its
own topic and a temporary lake.

    python bench/bronze_throughput.py --records 1000000 --partitions 4
    python bench/bronze_throughput.py --producer-only   # no Spark: the producer figures alone
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from ingest.producer import build_producer, encode_record, send_all
from periscope import get_settings
from periscope.lake import delta_row_count
from periscope.topics import TopicSpec, create_topics
from spark_streaming.bronze import BronzeTarget, start_bronze
from spark_streaming.session import build_spark_session


def _messages(count: int, stations: int):
    """Weather-shaped records, about 150 bytes each, keyed by station.

    Names, keys and timestamps are made once, so the figures are the producer's (encoding
    included), not the cost of formatting the test data.
    """
    names = [f"station_{s:04d}" for s in range(stations)]
    keys = [name.encode() for name in names]
    hours = [f"2024-01-01T{h:02d}:00:00Z" for h in range(24)]
    for i in range(count):
        s = i % stations
        record = {
            "station_id": names[s],
            "timestamp": hours[(i // stations) % 24],
            "temperature": 10.0 + (i % 97) / 10,
            "humidity": 40.0 + (i % 53),
            "pressure": 1000.0 + (i % 31),
            "wind_speed": (i % 17) / 2,
            "wind_direction": float(i % 360),
        }
        yield keys[s], encode_record(record)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", "-m", type=int, default=1_000_000, help="backlog size M")
    parser.add_argument(
        "--partitions", "-p", type=int, default=4, help="partitions of the bench topic"
    )
    parser.add_argument("--stations", type=int, default=1000, help="distinct keys")
    parser.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="records per micro-batch (default: all)",
    )
    parser.add_argument(
        "--producer-only", action="store_true", help="stop after producing (no Spark)"
    )
    args = parser.parse_args()

    settings = get_settings()
    topic = f"bench-bronze-{uuid.uuid4().hex[:8]}"
    create_topics(
        settings, [TopicSpec(topic, args.partitions, 1, {"retention.ms": str(3_600_000)})]
    )
    workdir = Path(tempfile.mkdtemp(prefix="periscope-bench-"))
    try:
        producer = build_producer(settings)
        started, cpu_started = time.perf_counter(), time.process_time()
        report = send_all(producer, topic, _messages(args.records, args.stations))
        produce_s = time.perf_counter() - started
        produce_cpu_s = time.process_time() - cpu_started  # this process, librdkafka's threads too
        producer.close()
        figures = {
            "records": args.records,
            "partitions": args.partitions,
            "producer_records_per_s": round(report.acknowledged / produce_s),
            "producer_seconds": round(produce_s, 2),
            # On a shared machine wall time depends on the neighbours; CPU time much less.
            "producer_cpu_seconds": round(produce_cpu_s, 2),
        }
        if args.producer_only:
            print(json.dumps(figures, indent=2))
            return

        spark = build_spark_session(
            "bench-bronze", settings=settings, conf={"spark.ui.enabled": "false"}
        )
        spark.sparkContext.setLogLevel("ERROR")
        target = BronzeTarget("bench", topic, str(workdir / "bronze"), str(workdir / "checkpoint"))
        started = time.perf_counter()
        query = start_bronze(
            spark,
            settings,
            target,
            available_now=True,
            max_offsets_per_trigger=args.max_offsets_per_trigger or args.records,
        )
        query.awaitTermination()
        bronze_s = time.perf_counter() - started
        batches = len(query.recentProgress)
        landed = delta_row_count(target.table_path)
        spark.stop()

        figures |= {
            "bronze_records_landed": landed,
            "bronze_records_per_s": round(landed / bronze_s),
            "bronze_seconds": round(bronze_s, 2),
            "bronze_batches": batches,
        }
        print(json.dumps(figures, indent=2))
        if landed != args.records:
            raise SystemExit(f"bronze landed {landed} of {args.records} records")
    finally:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        admin.delete_topics([topic])
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
