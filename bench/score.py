"""Gold scoring: rows scored per second with 1 and 2 Ray actors, and end-to-end latency.

Throughput (default): the source's champion models score the silver feature windows of the
lake's last `--days` days through the actor pool (`ml.gold.ScorerPool`, what `periscope
score` runs), `--repeats` times after one warm-up pass (the warm-up fills the per-series
Prophet caches, as a running scorer has them). Each window gets 72 forecasts from the served
method of every (measure, horizon bucket): the global model's trees are most of the cost.
Ray start-up and model loading are excluded.
Needs history in the lake and champions (see the README: replay, bronze, silver, train).

    python bench/score.py --source weather --actors 1 2 --days 90
    python bench/score.py --source weather --serve gbm     # the global model at every horizon
    python bench/score.py --source weather --serve gbm --long-history-gbm   # of production's size

What a window costs depends on what the champion serves (printed first): the global model's
trees cost far more per forecast than Prophet's cached yhat or a baseline's lookup. The demo's
global models learn 30 days of 5 stations and stay small; `--long-history-gbm` serves instead
global models fitted (with production's settings) on the two years of every entity of the shared
dataset that end a month before its last day, the size a champion trained on a long history has.

End-to-end (`--latency`): a steady stream (default 1,000 records/s over 1,000 stations,
event time = now) through bronze, silver and the scorer, all running at once, in a temporary
lake with its own topics and MLflow store. As deployed, the load generator (`periscope
ingest`'s place), bronze and silver (`--engine direct`, the default: the direct engines, each in
a process of its own; `--engine spark`: two queries of one Spark application) and the scorer
(`periscope score`) are separate processes. Its stations are scored with the weather
champions (station i uses the forecast series of real station i mod 8), so every window pays
for a real anomaly score and 72 real forecasts. A record's latency is the commit time of the
gold MERGE that covered its silver batch minus its Kafka timestamp. Before the measured
stream, `--prime` seconds of input are produced and scored, so the scorer has loaded and
warmed its models (reported as `start_up_s`, a one-off a running scorer does not pay again);
the first `--warmup` seconds of the measured stream are excluded. Needs `periscope services up`.

    python bench/score.py --latency --rate 1000 --stations 1000 --duration 90

`--dashboard` also starts `periscope dashboard` on the bench's lake (weather's gold path links to
the bench's gold) and keeps one page on Entities in headless Chromium through the measured
stream, noting each second the gold version it shows: it prints how far behind the page was
(the time since the oldest gold commit it did not show yet; p50, p95, max).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ml.data import LakeSlice, SilverFeed, feature_windows, latest_feature_batch
from ml.gold import history_for, predictions_path, run_scoring, scoring_pool
from ml.registry import ModelKind, Registry
from periscope import get_settings
from periscope.contracts import WEATHER, WindowSpec, get_contract


def throughput(args: argparse.Namespace) -> None:
    settings = get_settings()
    contract = get_contract(args.source)
    registry = Registry(settings)
    served = _served(registry, args.source)
    print(f"{args.source} forecast champion serves (share of measure x horizon): {served}")
    if args.serve:
        # A copy of the champions in a registry of the bench's own, the forecast one serving
        # `--serve` at every horizon: the dev registry's champions stay as they are.
        work = Path(tempfile.mkdtemp(prefix="periscope-score-throughput-"))
        bench_settings = settings.model_copy(update={"local_dir": work, "mlflow_tracking_uri": ""})
        long_history = _long_history_globals(contract) if args.long_history_gbm else None
        _serving_copy(registry, bench_settings, args.source, args.serve, long_history)
        settings, registry = bench_settings, Registry(bench_settings)
        print(f"scored with a copy serving {_served(registry, args.source)}")
    if latest_feature_batch(settings, contract) is None:
        raise SystemExit(f"no {args.source} feature windows in the lake: run silver first")
    newest = feature_windows(settings, contract)["window_start"].max()
    features = feature_windows(
        settings, contract, LakeSlice(since=newest - timedelta(days=args.days))
    )
    hourly = history_for(SilverFeed(settings, contract), features, datetime.now(UTC))
    print(
        f"{args.source}: {len(features):,} windows ({features['station_id'].nunique()} stations, "
        f"{features['window_start'].min()} .. {newest})"
    )
    figures = {}
    for actors in args.actors:
        with scoring_pool(settings, actors) as pool:
            versions = pool.sync_models(contract.name, registry)
            if versions["forecast"] is None:
                raise SystemExit(f"no {args.source} forecast champion: run `periscope train`")
            pool.score(
                contract.name, features, hourly, datetime.now(UTC), key=contract.key_field
            )  # warm-up
            seconds = 0.0
            for _ in range(args.repeats):
                # A backfill scores each window once: no repeat may answer from the memo.
                pool.forget_forecasts(contract.name)
                started = time.perf_counter()
                rows = pool.score(
                    contract.name, features, hourly, datetime.now(UTC), key=contract.key_field
                )
                seconds += time.perf_counter() - started
        rate = rows.num_rows * args.repeats / seconds
        figures[f"rows_per_s_{actors}_actors"] = round(rate)
        print(
            f"actors={actors}: {rows.num_rows * args.repeats:,} rows in {seconds:.1f} s "
            f"= {rate:,.0f} rows/s"
        )
    print(json.dumps(figures, indent=2))


def _served(registry: Registry, source: str) -> str:
    """Which methods the source's forecast champion serves, as shares of (measure, horizon)."""
    from collections import Counter

    from ml.forecast import ForecastBundle

    info = registry.resolve(source, "forecast")
    if info is None:
        return "no champion"
    bundle = ForecastBundle.load(registry.download(info))
    counts = Counter(m for plan in bundle.plans.values() for m in plan.served)
    total = sum(counts.values())
    return ", ".join(f"{m} {n / total:.0%}" for m, n in counts.most_common())


def _serving(bundle, method: str | None):
    """The bundle with every (measure, horizon) served by `method` (None: as it is)."""
    if method is None:
        return bundle
    for measure, plan in bundle.plans.items():
        if method not in plan.offsets:
            raise SystemExit(f"the {bundle.source} champion has no {method} forecasts of {measure}")
        bundle.plans[measure] = dataclasses.replace(plan, served=[method] * len(plan.served))
    return bundle


def _serving_copy(
    dev: Registry, settings, source: str, method: str, globals_: dict | None = None
) -> None:
    """Register the source's champions in the registry of `settings`, the forecast bundle
    serving `method` at every (measure, horizon) where it has a model (its bands' offsets);
    `globals_`: global models (by measure) to put in place of the bundle's."""
    from ml.anomaly import AnomalyModel
    from ml.forecast import ForecastBundle

    forecast_info = dev.resolve(source, "forecast")
    anomaly_info = dev.resolve(source, "anomaly")
    if forecast_info is None or anomaly_info is None:
        raise SystemExit(f"no {source} champions: run `periscope train --source {source}`")
    bundle = _serving(ForecastBundle.load(dev.download(forecast_info)), method)
    bundle.globals.update({m: g for m, g in (globals_ or {}).items() if m in bundle.globals})
    anomaly = AnomalyModel.load(dev.download(anomaly_info))
    # After the downloads: MLflow's tracking URI is process-wide.
    _register_champions(Registry(settings), source, bundle, anomaly)


def _long_history_globals(contract) -> dict:
    """Global models of every forecast measure fitted with production's settings on the two
    years of the shared dataset's entities that end a month before its last day (no Ray)."""
    from ml.data import series_frames
    from ml.evaluation import dataset_hourly
    from ml.forecast import ForecastConfig, fit_every_global, source_config, temporal_split
    from ml.training import TrainConfig

    hourly = dataset_hourly(contract, get_settings().data_dir)
    last = hourly["ds"].max() - timedelta(days=30)
    hourly = hourly[hourly["ds"] <= last]
    split = temporal_split(
        hourly["ds"].min(),
        last,
        test_days=0,
        validation_days=TrainConfig.validation_days,
        max_train_days=TrainConfig.max_train_days,
    )
    frames = series_frames(hourly, contract)
    started = time.perf_counter()
    models = fit_every_global(frames, split, source_config(ForecastConfig(), contract))
    print(
        f"fitted global models on {split.train_start:%Y-%m-%d} .. {split.train_end:%Y-%m-%d} "
        f"of {hourly[contract.key_field].nunique()} entities in {time.perf_counter() - started:.0f} s: "
        + ", ".join(
            f"{m} {g.regressor.n_iter_} trees, {g.train_rows:,} rows" for m, g in models.items()
        )
    )
    return models


def _register_champions(registry: Registry, source: str, forecast, anomaly) -> None:
    """Register the two models as `source`'s champions in `registry`."""
    kinds: tuple[tuple[ModelKind, Any], ...] = (("forecast", forecast), ("anomaly", anomaly))
    for kind, model in kinds:
        directory = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        model.save(directory)
        info = registry.log_model(
            source=source, kind=kind, directory=directory, params={}, metrics={}, tags={}
        )
        registry.set_champion(source, kind, info.version)
        shutil.rmtree(directory, ignore_errors=True)


def _bench_models(settings, bench, stations: int, serve: str | None = None) -> None:
    """Register the weather champions under the bench source, one real series per station;
    `serve`: the forecast bundle serves that method at every horizon."""
    from ml.anomaly import AnomalyModel
    from ml.forecast import ForecastBundle

    dev = Registry(get_settings())
    forecast_info = dev.resolve("weather", "forecast")
    anomaly_info = dev.resolve("weather", "anomaly")
    if forecast_info is None or anomaly_info is None:
        raise SystemExit("no weather champions: run `periscope train --source weather` first")
    base = _serving(ForecastBundle.load(dev.download(forecast_info)), serve)
    real = sorted({station for station, _ in base.series()})
    # Station i borrows real station i mod n's series (its Prophet, mean); the global models
    # and the served plans are the measure's own, shared by every station.
    borrowed = {
        (f"station_{i:04d}", measure): (real[i % len(real)], measure)
        for i in range(stations)
        for measure in base.measures()
        if (real[i % len(real)], measure) in base.means
    }
    bundle = ForecastBundle(
        source=bench.name,
        config=base.config,
        split=base.split,
        means={key: base.means[real_key] for key, real_key in borrowed.items()},
        prophets={
            key: base.prophets[real_key]
            for key, real_key in borrowed.items()
            if real_key in base.prophets
        },
        globals_=base.globals,
        plans=base.plans,
    )
    anomaly = dataclasses.replace(AnomalyModel.load(dev.download(anomaly_info)), source=bench.name)
    _register_champions(Registry(settings), bench.name, bundle, anomaly)


def _score(settings, contract, stop, verbose: bool) -> None:
    """The scorer in a process of its own, as `periscope score` runs beside silver."""
    if verbose:
        _log_phases()
    run_scoring(settings, [contract], available_now=False, publish=True, stop=stop)


def _log_phases() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    for name in ("ml.gold", "spark_streaming.silver"):
        logging.getLogger(name).setLevel(logging.INFO)


def latency(args: argparse.Namespace) -> None:
    from _direct_engines import start_direct, stop_direct  # bench/, beside this script

    # `python bench/score.py` puts bench/ on sys.path: reuse the silver bench's producer.
    from api_latency import free_port
    from dashboard_paint import behind_s, start_dashboard, wait_until_up, watch_shown_version
    from deltalake import DeltaTable
    from silver_latency import delete_topics, latency_summary, produce

    from periscope.lake import read_delta
    from periscope.topics import create_topics, topic_specs
    from serving.dashboard import commit_history
    from spark_streaming.bronze import BronzeTarget, start_bronze
    from spark_streaming.session import build_spark_session
    from spark_streaming.silver import SilverTables, start_silver

    work = Path(tempfile.mkdtemp(prefix="periscope-score-latency-"))
    settings = get_settings().model_copy(
        update={
            "lake_root": str(work / "lake"),
            "local_dir": work,
            "mlflow_tracking_uri": "",
            "stream_trigger_interval": args.trigger,
            "score_poll_interval_s": 0.2,
        }
    )
    bench = dataclasses.replace(WEATHER, name=f"bench{uuid.uuid4().hex[:6]}", window=WindowSpec())
    _bench_models(settings, bench, args.stations, args.serve)
    create_topics(settings, topic_specs(settings, [bench]))
    spark = None
    if args.engine == "spark":
        spark = build_spark_session(
            "bench-score-latency", settings=settings, conf={"spark.ui.enabled": "false"}
        )
        spark.sparkContext.setLogLevel("ERROR")
    tables = SilverTables.for_contract(settings, bench)
    gold_path = predictions_path(settings, bench)
    dashboard = watch = None
    shown: list[tuple[float, int]] = []
    watching = threading.Event()
    if args.dashboard:
        # The dashboard draws the registered contracts: weather's gold path leads to the bench's.
        link = Path(settings.lake_path(WEATHER.table("gold", "predictions")))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(gold_path), target_is_directory=True)
        port = free_port()
        dashboard_url = f"http://127.0.0.1:{port}"
        dashboard = start_dashboard(Path(settings.lake_root), port, work / "dashboard.log")
        wait_until_up(dashboard_url, dashboard)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    scorer = None
    engines_stop, engines = None, []
    try:
        if spark is not None:
            bronze = start_bronze(spark, settings, BronzeTarget.for_contract(settings, bench))
            silver = start_silver(spark, settings, bench, tables)
        else:
            engines_stop, engines = start_direct(settings, bench, verbose=args.verbose)
        scorer = context.Process(target=_score, args=(settings, bench, stop, args.verbose))
        scorer.start()

        def wait_for_gold(records: int, timeout: float) -> None:
            """Until silver has processed `records` and gold has scored every silver batch."""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    processed = sum(
                        read_delta(tables.batches, ["bronze_rows"])
                        .column("bronze_rows")
                        .to_pylist()
                    )
                except Exception:  # noqa: BLE001 - the ledger may not exist yet
                    processed = 0
                latest = latest_feature_batch(settings, bench)
                done = DeltaTable.is_deltatable(gold_path) and (
                    DeltaTable(gold_path).transaction_version("periscope-score") or -1
                ) >= (latest if latest is not None else 0)
                if processed >= records and done:
                    return
                time.sleep(1)

        # Start-up: a few seconds of every station, scored once, so the scorer has loaded
        # and warmed its models (one-off, reported apart) before the measured stream.
        priming_started = time.time()
        primed = produce(settings, bench.topic("raw"), args.rate, args.stations, args.prime)
        wait_for_gold(primed, timeout=900)
        start_up = time.time() - priming_started
        if dashboard is not None:  # one open page, sampled while the measured stream runs
            watch = threading.Thread(
                target=watch_shown_version, args=(dashboard_url, watching, shown), daemon=True
            )
            watch.start()
        started = time.time()
        sent = produce(settings, bench.topic("raw"), args.rate, args.stations, args.duration)
        wait_for_gold(primed + sent, timeout=300)
        finished = time.time()
        watching.set()
        if watch is not None:
            watch.join(timeout=60)
        stop.set()
        scorer.join(timeout=120)
        if spark is not None:
            bronze.stop()
            silver.stop()
        else:
            stop_direct(engines_stop, engines)

        processed = sum(
            read_delta(tables.batches, ["bronze_rows"]).column("bronze_rows").to_pylist()
        )
        commits = sorted(
            (int(c["periscope.silver_through"]), c["timestamp"] / 1000)
            for c in DeltaTable(gold_path).history()
            if "periscope.silver_through" in c
        )

        def gold_time(batch: int) -> float | None:
            times = [t for through, t in commits if through >= batch]
            return min(times) if times else None

        observations = read_delta(
            tables.observations, ["kafka_timestamp", "silver_batch_id"]
        ).to_pylist()
        cutoff = started + args.warmup
        latencies = []
        unscored = 0
        for o in observations:
            sent_at = o["kafka_timestamp"].timestamp()
            if sent_at < cutoff:
                continue
            scored = gold_time(o["silver_batch_id"])
            if scored is None:
                unscored += 1
            else:
                latencies.append(scored - sent_at)
        gold_rows = len(read_delta(gold_path, ["station_id"]))
        figures = {
            "engine": args.engine,
            "rate_target_per_s": args.rate,
            "stations": args.stations,
            "records_sent": sent,
            "start_up_s": round(start_up, 1),
            "records_processed_by_silver": processed - primed,
            "sustained_rate_per_s": round((processed - primed) / (finished - started)),
            "gold_rounds": len(commits),
            "gold_rows": gold_rows,
            "measured_records": len(latencies),
            "records_not_scored_in_time": unscored,
            **latency_summary(latencies),
        }
        if dashboard is not None:
            history = [
                (int(c["version"]), c["timestamp"] / 1000) for c in commit_history(gold_path)
            ]
            lags = behind_s([(t, v) for t, v in shown if t >= cutoff], history)
            figures["dashboard_samples"] = len(lags)
            if lags:
                figures["dashboard_behind_p50_s"] = round(statistics.median(lags), 1)
                figures["dashboard_behind_p95_s"] = round(statistics.quantiles(lags, n=20)[18], 1)
                figures["dashboard_behind_max_s"] = round(max(lags), 1)
        print(json.dumps(figures, indent=2))
    finally:
        stop.set()
        watching.set()
        if dashboard is not None:
            dashboard.terminate()
            dashboard.wait(timeout=30)
        if scorer is not None and scorer.is_alive():
            scorer.terminate()
        if engines_stop is not None:
            stop_direct(engines_stop, engines)
        if spark is not None:
            spark.stop()
        delete_topics(settings, bench)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="weather")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--days", type=float, default=90.0, help="windows of the last N days")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--serve",
        choices=["gbm", "prophet", "persistence", "seasonal_naive"],
        help="score with a copy of the champions whose forecast bundle serves this method at "
        "every horizon (default: the champion as it is); with --latency too",
    )
    parser.add_argument(
        "--long-history-gbm",
        action="store_true",
        help="with --serve gbm (throughput): serve global models fitted with production's "
        "settings on two years of the shared dataset, not the demo champion's small ones",
    )
    parser.add_argument("--latency", action="store_true", help="measure end-to-end latency")
    parser.add_argument("--rate", type=int, default=1000, help="records per second")
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of steady input")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds excluded")
    parser.add_argument(
        "--prime",
        type=float,
        default=5.0,
        help="seconds of input scored before the measured stream (model load and warm-up)",
    )
    parser.add_argument("--trigger", default="0 seconds", help="micro-batch interval")
    parser.add_argument(
        "--engine",
        choices=["direct", "spark"],
        default="direct",
        help="--latency: bronze and silver with the direct engines (one machine's default) "
        "or as two queries of one Spark application",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log silver batches and gold rounds with phases"
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="--latency: also keep the live dashboard open on the bench's gold and print how "
        "far behind its page was while the stream ran (issue 18: at most 15 s)",
    )
    args = parser.parse_args()
    if args.verbose:
        _log_phases()
    latency(args) if args.latency else throughput(args)


if __name__ == "__main__":
    main()
