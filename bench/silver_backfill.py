"""Silver backfill: one bronze backlog of M weather records, run through silver by each engine.

Produces M records (1% malformed by default; each station one reading an hour, so nothing is a
duplicate) to a bench source's raw topic, lands them in bronze once with the direct bronze
writer, copies that bronze table into one lake per engine, then runs silver `--available-now`
on each lake, each engine in a process of its own so the wall time includes start-up
(imports, and for Spark the JVM and session):

- `spark`: the Spark query (`run_silver`, Delta streaming source, default micro-batch size)
- `direct`: the direct engine (`run_silver_direct`, the `silver_batch_records` setting)

Both publish features and dead letters to Kafka as a live run does. Per engine it prints the
work rate (bronze records / seconds from ready to caught up), the wall time from process start
to exit, the peak RSS of the process tree (the JVM included), its CPU seconds, and checks the
audit (every bronze record is an observation, a quarantined row or a duplicate, the ledger
agrees with the tables); at the end it compares the engines' counts. Needs a Kafka broker
(`periscope services up`, or a test instance's settings). Note the load average beside the
figures: neighbours move wall times, CPU seconds much less.

    python bench/silver_backfill.py --records 1000000
    python bench/silver_backfill.py --engines direct --records 200000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

_STARTED = time.perf_counter()  # as early as this process can tell

MB = 1024 * 1024
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def bench_contract(name: str):  # type: ignore[no-untyped-def]
    """The weather contract under the bench's own name (its own topics and tables)."""
    from periscope.contracts import WEATHER

    return dataclasses.replace(WEATHER, name=name)


def _messages(count: int, stations: int, bad_every: int):
    """Weather records keyed by station, one an hour per station; every `bad_every`-th broken."""
    from ingest.producer import encode_record

    names = [f"station_{s:04d}" for s in range(stations)]
    keys = [name.encode() for name in names]
    for i in range(count):
        s = i % stations
        if bad_every and i % bad_every == bad_every - 1:
            yield keys[s], b'{"station_id": "' + names[s].encode() + b'", "timestamp": '
            continue
        record = {
            "station_id": names[s],
            "timestamp": (T0 + timedelta(hours=i // stations)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "temperature": 10.0 + (i % 97) / 10,
            "humidity": 40.0 + (i % 53),
            "pressure": 1000.0 + (i % 31),
            "wind_speed": (i % 17) / 2,
            "wind_direction": float(i % 360),
        }
        yield keys[s], encode_record(record)


# --- one engine, in its own process ------------------------------------------------------
def _run_silver(engine: str, lake: str, source: str) -> dict:
    from periscope import get_settings

    settings = get_settings().model_copy(update={"lake_root": lake})
    contract = bench_contract(source)
    if engine == "spark":
        from spark_streaming.session import build_spark_session
        from spark_streaming.silver import run_silver

        spark = build_spark_session(
            "bench-silver", settings=settings, conf={"spark.ui.enabled": "false"}
        )
        spark.sparkContext.setLogLevel("ERROR")
        ready = time.perf_counter()
        processed = run_silver(settings, [contract], available_now=True, spark=spark)
        work_s = time.perf_counter() - ready
        spark.stop()
    else:
        from spark_streaming.silver.direct import run_silver_direct

        ready = time.perf_counter()
        processed = run_silver_direct(settings, [contract], available_now=True)
        work_s = time.perf_counter() - ready
    return {
        "ready_s": round(ready - _STARTED, 2),
        "work_s": round(work_s, 2),
        "processed": processed[contract.name],
    }


# --- the parent: produce, land bronze, run each engine, check -----------------------------
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


def _run_engine(engine: str, lake: Path, source: str, *, verbose: bool = False) -> dict:
    command = [sys.executable, __file__, "--run", engine, "--lake", str(lake), "--source", source]
    started = time.perf_counter()
    log = (lake / "run.log").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    peak_rss, cpu = 0, 0.0
    while process.poll() is None:
        rss, cpu_now = _tree_usage(process.pid)
        peak_rss, cpu = max(peak_rss, rss), max(cpu, cpu_now)
        time.sleep(0.1)
    wall_s = time.perf_counter() - started
    out = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        tail = (lake / "run.log").read_text()[-3000:]
        raise SystemExit(f"{engine} failed ({process.returncode}): {out[-1000:]}\n{tail}")
    figures = json.loads(out.strip().splitlines()[-1])
    if verbose:  # each batch's log line: where its time went
        for line in (lake / "run.log").read_text().splitlines():
            if " batch " in line:
                print(f"  {engine}: {line.strip()}", flush=True)
    return figures | {
        "wall_s": round(wall_s, 2),
        "peak_rss_mb": round(peak_rss / MB),
        "cpu_s": round(cpu, 1),
    }


def _audit(settings, contract) -> dict:  # type: ignore[no-untyped-def]
    from periscope.audit import audit_source

    audit = audit_source(settings, contract, require_caught_up=True)
    return {
        "bronze": audit.bronze,
        "processed": audit.processed,
        **audit.tables,
        "windows": audit.windows,
        "audit_ok": not audit.problems,
        "problems": audit.problems,
    }


def _table(results: dict[str, dict], records: int, load: tuple[float, float, float]) -> str:
    lines = [
        f"silver backfill of {records:,} bronze records, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)",
        "| engine | work | work rate | wall incl. start-up | peak RSS | CPU | windows | late | audit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, f in results.items():
        lines.append(
            f"| {engine} | {f['work_s']:.1f} s | {f['records_per_s']:,} rec/s | {f['wall_s']:.1f} s "
            f"| {f['peak_rss_mb']:,} MB | {f['cpu_s']:.1f} s | {f['windows']:,} | {f['late']:,} "
            f"| {'adds up' if f['audit_ok'] else 'NO'} |"
        )
    # The engines read the same backlog: any difference in what they made is a finding.
    counts = {
        engine: tuple(
            f[k] for k in ("observations", "quarantined", "duplicates", "late", "windows")
        )
        for engine, f in results.items()
    }
    if len(set(counts.values())) > 1:
        lines.append(
            f"ENGINES DIFFER (observations, quarantined, duplicates, late, windows): {counts}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", "-m", type=int, default=1_000_000, help="backlog size M")
    parser.add_argument("--stations", type=int, default=1000, help="distinct keys")
    parser.add_argument(
        "--bad-every", type=int, default=100, help="every N-th record is malformed (0: none)"
    )
    parser.add_argument(
        "--engines", default="spark,direct", help="comma-separated: spark, direct (in this order)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print each batch's log line (its phases)"
    )
    # Internal: one engine's run in a child process.
    parser.add_argument("--run", choices=["spark", "direct"], help=argparse.SUPPRESS)
    parser.add_argument("--lake", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        import logging

        # Each batch's line (counts and phases) to run.log, for --verbose.
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        print(json.dumps(_run_silver(args.run, args.lake, args.source)))
        return

    from ingest.producer import build_producer, send_all
    from periscope import get_settings
    from periscope.topics import create_topics, topic_specs
    from spark_streaming.bronze import BronzeTarget
    from spark_streaming.bronze_direct import DirectBronzeWriter

    source = f"bench{uuid.uuid4().hex[:6]}"
    contract = bench_contract(source)
    workdir = Path(tempfile.mkdtemp(prefix="periscope-silver-backfill-"))
    base = get_settings().model_copy(update={"lake_root": str(workdir / "bronze_lake")})
    create_topics(base, topic_specs(base, [contract]))
    try:
        producer = build_producer(base)
        started = time.perf_counter()
        send_all(
            producer,
            contract.topic("raw"),
            _messages(args.records, args.stations, args.bad_every),
        )
        producer.close()
        produced_s = time.perf_counter() - started
        started = time.perf_counter()
        target = BronzeTarget.for_contract(base, contract)
        DirectBronzeWriter(base, [target], group_id=f"bench-{source}").run(available_now=True)
        figures: dict = {
            "records": args.records,
            "produce_s": round(produced_s, 2),
            "bronze_direct_s": round(time.perf_counter() - started, 2),
        }
        print(json.dumps(figures), flush=True)

        results: dict[str, dict] = {}
        for engine in args.engines.split(","):
            lake = workdir / f"lake_{engine}"
            shutil.copytree(Path(target.table_path), lake / "bronze" / Path(target.table_path).name)
            result = _run_engine(engine, lake, source, verbose=args.verbose)
            audit = _audit(base.model_copy(update={"lake_root": str(lake)}), contract)
            results[engine] = (
                result | audit | {"records_per_s": round(audit["processed"] / result["work_s"])}
            )
            results[engine]["load_average"] = [round(x, 2) for x in os.getloadavg()]
            print(f"{engine}: {json.dumps(results[engine])}", flush=True)
            shutil.rmtree(lake, ignore_errors=True)
        figures["engines"] = results
        if len(results) == 2:
            counts = ("observations", "quarantined", "duplicates", "late", "windows")
            spark, direct = results["spark"], results["direct"]
            figures["engines_agree"] = all(spark[k] == direct[k] for k in counts)
        print(json.dumps(figures, indent=2))
        print(_table(results, args.records, os.getloadavg()))
        if not all(r["audit_ok"] for r in results.values()):
            raise SystemExit("an engine's silver does not add up")
    finally:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=base.kafka_bootstrap_servers)
        admin.delete_topics(list(contract.topics.values()))
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
