"""Gold MERGE time as the table grows: does a round cost its own rows, or the whole table?

A live stream upserts the open windows of every station round after round while closed
windows pile up behind them. This writes `--minutes` rounds of gold rows (`--stations` x 5
open windows, each with 72 forecasts, the window advancing a minute per round) with
`ml.gold.write_predictions`, in a temporary folder, and prints the MERGE seconds, the table's
files and the largest file's rows every 10 rounds. No services needed.

    python bench/merge_growth.py --stations 1000 --minutes 60
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable

from ml.gold import FORECAST_TYPE, gold_schema, write_predictions

MEASURES = ("temperature", "humidity", "pressure")
T0 = datetime(2026, 1, 1, tzinfo=UTC)

KEY = "station_id"  # the weather contract's key


def _round(stations: int, first_minute: int, rng: np.random.Generator) -> pa.Table:
    """Gold rows of the 5 windows open at `first_minute`, for every station."""
    starts = [T0 + timedelta(minutes=first_minute + k) for k in range(5) for _ in range(stations)]
    n = len(starts)
    forecasts = [
        [
            {
                "measure": m,
                "horizon_h": h,
                "target_time": start + timedelta(hours=h),
                "yhat": float(y),
                "yhat_lower": float(y) - 1,
                "yhat_upper": float(y) + 1,
            }
            for m in MEASURES
            for h, y in zip(range(1, 25), rng.normal(10, 3, 24), strict=True)
        ]
        for start in starts[:stations]  # one set per station, shared by its 5 windows
    ] * 5
    return pa.table(
        {
            "station_id": [f"station_{i:04d}" for _ in range(5) for i in range(stations)],
            "window_start": starts,
            "window_end": [s + timedelta(minutes=5) for s in starts],
            "anomaly_score": rng.random(n),
            "is_anomaly": [False] * n,
            "forecast_origin": starts,
            "forecasts": pa.array(forecasts, FORECAST_TYPE),
            "forecast_model": ["bench_forecast"] * n,
            "forecast_version": [1] * n,
            "anomaly_model": ["bench_anomaly"] * n,
            "anomaly_version": [1] * n,
            "scored_at": [datetime.now(UTC)] * n,
        }
    ).cast(gold_schema(KEY))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--minutes", type=int, default=60, help="rounds, a minute apart")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    folder = tempfile.mkdtemp(prefix="periscope-merge-growth-")
    path = f"{folder}/gold"
    try:
        for minute in range(args.minutes + 1):
            rows = _round(args.stations, minute, rng)
            started = time.perf_counter()
            write_predictions(path, rows, through=minute, key=KEY)
            seconds = time.perf_counter() - started
            if minute % 10 == 0:
                files = pa.table(DeltaTable(path).get_add_actions(flatten=True))
                print(
                    f"round {minute:3d}: MERGE {seconds:.2f} s, {files.num_rows} files, "
                    f"largest {max(files.column('num_records').to_pylist()):,} rows, "
                    f"table {sum(files.column('num_records').to_pylist()):,} rows"
                )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
