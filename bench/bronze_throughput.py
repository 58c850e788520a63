"""Bronze throughput: one backlog of M records, landed by each bronze engine side by side.

Produces the backlog once (the ingest producer, librdkafka: encoded, sent and acknowledged),
then lands the same topic into a fresh table with each engine, each in a process of its own
so the wall time includes start-up (imports, JVM and Spark session, consumer-group join):

- `spark`: the Spark job (`start_bronze`, available-now, the settings' micro-batch size)
- `direct`: the direct writer (librdkafka consumer group + delta-rs, the settings' batch size)

Per engine it prints the work rate (records / seconds from "ready" to caught up), the wall
time from process start to exit, where the time went, the peak RSS of the process tree (the
JVM included) and its CPU seconds, and checks exactly once: every (partition, offset) of the
topic once in the table. Needs a Kafka broker (`periscope services up`, or the test
instance's settings); uses its own topic and a temporary lake. Note the load average beside
the figures: other work on the machine moves wall times, CPU seconds much less.

    python bench/bronze_throughput.py --records 1000000 --partitions 4
    python bench/bronze_throughput.py --engines direct          # one engine
    python bench/bronze_throughput.py --spark-breakdown         # + Spark's fetch-only and Parquet-only runs
    python bench/bronze_throughput.py --producer-only           # the producer figures alone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

_STARTED = time.perf_counter()  # as early as this process can tell

MB = 1024 * 1024


def _messages(count: int, stations: int):
    """Weather-shaped records, about 150 bytes each, keyed by station.

    Names, keys and timestamps are made once, so the figures are the producer's (encoding
    included), not the cost of formatting the test data.
    """
    from ingest.producer import encode_record

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


# --- one engine, in its own process ------------------------------------------------------


def _land_with_spark(topic: str, table: str, workdir: Path, breakdown: bool) -> dict:
    from periscope import get_settings
    from spark_streaming.bronze import BronzeTarget, read_kafka, start_bronze, to_bronze
    from spark_streaming.session import build_spark_session

    settings = get_settings()
    session_started = time.perf_counter()
    spark = build_spark_session(
        "bench-bronze", settings=settings, conf={"spark.ui.enabled": "false"}
    )
    spark.sparkContext.setLogLevel("ERROR")
    figures: dict = {"spark_session_s": round(time.perf_counter() - session_started, 2)}
    if breakdown:
        # The same read with no write (noop), then with a plain Parquet write and no Delta.
        for sink in ("noop", "parquet"):
            started = time.perf_counter()
            writer = (
                to_bronze(read_kafka(spark, settings, topic))
                .writeStream.format(sink)
                .option("checkpointLocation", str(workdir / f"checkpoint_{sink}"))
                .trigger(availableNow=True)
            )
            if sink == "parquet":
                writer = writer.option("path", str(workdir / "parquet")).partitionBy("ingest_date")
            query = writer.start()
            query.awaitTermination()
            figures[f"spark_{sink}_only_s"] = round(time.perf_counter() - started, 2)
    ready = time.perf_counter()
    query = start_bronze(
        spark,
        settings,
        BronzeTarget("bench", topic, table, str(workdir / "checkpoint")),
        available_now=True,
    )
    query.awaitTermination()
    work_s = time.perf_counter() - ready
    durations: dict[str, int] = {}
    for progress in query.recentProgress:
        for name, ms in progress.durationMs.items():
            durations[name] = durations.get(name, 0) + ms
    spark.stop()
    return figures | {
        "ready_s": round(ready - _STARTED, 2),
        "work_s": round(work_s, 2),
        "batches": len([p for p in query.recentProgress if p.numInputRows]),
        # addBatch = Kafka fetch + Parquet encoding + Delta commit of the micro-batch
        "spark_duration_s": {k: round(v / 1000, 2) for k, v in sorted(durations.items())},
    }


def _land_direct(topic: str, table: str) -> dict:
    from periscope import get_settings
    from spark_streaming.bronze import BronzeTarget
    from spark_streaming.bronze_direct import DirectBronzeWriter

    settings = get_settings()
    target = BronzeTarget("bench", topic, table, "")
    writer = DirectBronzeWriter(settings, [target], group_id=f"bench-{topic}")
    ready = time.perf_counter()
    writer.run(available_now=True)
    work_s = time.perf_counter() - ready
    return {
        "ready_s": round(ready - _STARTED, 2),
        "work_s": round(work_s, 2),
        "batches": writer.batches,
        "direct_s": {k: round(v, 2) for k, v in writer.timings.items()},
    }


# --- the parent: produce, run each engine, check -----------------------------------------


def _tree_usage(root: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of a process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    rss, cpu, todo = 0, 0.0, [root]
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        if pid in stats:
            fields = stats[pid]
            cpu += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            rss += int(fields[21]) * page
        todo += children.get(pid, [])
    return rss, cpu


def _run_engine(engine: str, topic: str, table: str, workdir: Path, breakdown: bool) -> dict:
    command = [sys.executable, __file__, "--land", engine, "--topic", topic, "--table", table]
    command += ["--workdir", str(workdir)] + (["--spark-breakdown"] if breakdown else [])
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak_rss, cpu_by_pid = 0, 0.0
    while process.poll() is None:
        rss, cpu = _tree_usage(process.pid)
        peak_rss, cpu_by_pid = max(peak_rss, rss), max(cpu_by_pid, cpu)
        time.sleep(0.1)
    wall_s = time.perf_counter() - started
    out = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"{engine} failed ({process.returncode}): {out[-2000:]}")
    figures = json.loads(out.strip().splitlines()[-1])
    return figures | {
        "wall_s": round(wall_s, 2),
        "peak_rss_mb": round(peak_rss / MB),
        "cpu_s": round(cpu_by_pid, 1),
    }


def _exactly_once(table: str, ends: dict[int, int]) -> tuple[int, bool]:
    """(rows, whether every (partition, offset) of the topic is in the table exactly once)."""
    from periscope.lake import read_delta

    rows = read_delta(table, ["partition", "offset"])
    per_partition = rows.group_by("partition").aggregate(
        [("offset", "count"), ("offset", "count_distinct"), ("offset", "min"), ("offset", "max")]
    )
    found = {row["partition"]: row for row in per_partition.to_pylist()}
    ok = rows.num_rows == sum(ends.values()) and all(
        end == 0
        or (
            p in found
            and found[p]["offset_count"] == found[p]["offset_count_distinct"] == end
            and (found[p]["offset_min"], found[p]["offset_max"]) == (0, end - 1)
        )
        for p, end in ends.items()
    )
    return rows.num_rows, ok


def _end_offsets(settings, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "x"})
    metadata = consumer.list_topics(topic, timeout=30).topics[topic]
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
        for p in metadata.partitions
    }
    consumer.close()
    return ends


def _table(results: dict[str, dict], records: int, load: tuple[float, float, float]) -> str:
    lines = [
        f"bronze on {records:,} records, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"({os.cpu_count()} cores)",
        "| engine | work | work rate | wall incl. start-up | peak RSS | CPU | exactly once |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, f in results.items():
        lines.append(
            f"| {engine} | {f['work_s']:.1f} s | {f['records_per_s']:,} rec/s | {f['wall_s']:.1f} s "
            f"| {f['peak_rss_mb']:,} MB | {f['cpu_s']:.1f} s | {'yes' if f['exactly_once'] else 'NO'} |"
        )
    return "\n".join(lines)


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
        "--engines", default="spark,direct", help="comma-separated: spark, direct (in this order)"
    )
    parser.add_argument(
        "--spark-breakdown",
        action="store_true",
        help="before Spark's bronze run, time the same read into a noop and a Parquet sink",
    )
    parser.add_argument(
        "--producer-only", action="store_true", help="stop after producing (no bronze)"
    )
    # Internal: one engine's run in a child process.
    parser.add_argument("--land", choices=["spark", "direct"], help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.land:
        landed = (
            _land_with_spark(args.topic, args.table, Path(args.workdir), args.spark_breakdown)
            if args.land == "spark"
            else _land_direct(args.topic, args.table)
        )
        print(json.dumps(landed))
        return

    from ingest.producer import build_producer, send_all
    from periscope import get_settings
    from periscope.topics import TopicSpec, create_topics

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
        figures: dict = {
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

        ends = _end_offsets(settings, topic)
        results: dict[str, dict] = {}
        for engine in args.engines.split(","):
            table = str(workdir / f"bronze_{engine}")
            result = _run_engine(engine, topic, table, workdir, args.spark_breakdown)
            rows, exactly_once = _exactly_once(table, ends)
            results[engine] = result | {
                "rows": rows,
                "records_per_s": round(rows / result["work_s"]),
                "exactly_once": exactly_once,
            }
            print(f"{engine}: {json.dumps(results[engine])}", flush=True)
        figures["engines"] = results
        figures["load_average"] = os.getloadavg()
        print(json.dumps(figures, indent=2))
        print(_table(results, args.records, os.getloadavg()))
        if not all(r["exactly_once"] for r in results.values()):
            raise SystemExit("an engine did not land every record exactly once")
    finally:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
        admin.delete_topics([topic])
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
