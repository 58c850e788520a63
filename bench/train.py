"""Training throughput: forecast series trained per second with 1 and 2 Ray workers.

Reads hourly series from the lake's silver observations (replay history and run silver first,
see the README), trains the same series with each worker count as `periscope train` does
(every candidate: Prophet per series and the global model per measure on train, the served
method and bands chosen on validation, scores on test), and prints series/s and the test
scores. Ray start-up is excluded; the split and the series are identical across runs.
Nothing is registered.

    python bench/train.py --source weather --series 24 --workers 1 2
"""

from __future__ import annotations

import argparse
import time

from ml.data import hourly_observations, series_frames
from ml.forecast import BUCKETS
from ml.ray_session import ray_session
from ml.training import TrainConfig, make_split, train_forecasts
from periscope import get_settings
from periscope.contracts import get_contract


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="weather")
    parser.add_argument("--series", type=int, default=24, help="How many series to train.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray workers.")
    parser.add_argument("--series-per-task", type=int, default=2, help="Prophet series per task.")
    parser.add_argument(
        "--max-train-days",
        type=float,
        default=TrainConfig.max_train_days,
        help="Train window in days (default: the production default).",
    )
    args = parser.parse_args()

    settings = get_settings()
    contract = get_contract(args.source)
    config = TrainConfig(max_train_days=args.max_train_days, series_per_task=args.series_per_task)
    hourly = hourly_observations(settings, contract)
    split = make_split(hourly, config)
    frames = series_frames(hourly[hourly["ds"] < split.test_end], contract)
    chosen = dict(sorted(frames.items())[: args.series])
    print(
        f"{args.source}: {len(chosen)} series, train {split.train_start} .. {split.train_end} "
        f"({(split.train_end - split.train_start).days} days), test until {split.test_end}"
    )
    for workers in args.workers:
        with ray_session(settings, workers):
            started = time.perf_counter()
            outcome = train_forecasts(chosen, split, config, source=args.source)
            seconds = time.perf_counter() - started
        trained = len(outcome.bundle.series())
        print(
            f"workers={workers}: {trained} series in {seconds:.1f} s = {trained / seconds:.2f} series/s "
            f"(skipped {len(outcome.skipped)}); test relative MAE {outcome.score:.3f}, "
            f"coverage {outcome.overall['coverage']:.3f}"
        )
    for measure, plan in outcome.bundle.plans.items():
        served = " / ".join(
            plan.served[first - 1] for first, _ in BUCKETS if first <= len(plan.served)
        )
        print(f"  {measure}: served per bucket 1-6 / 7-12 / 13-24 h: {served}")


if __name__ == "__main__":
    main()
