"""Walk-forward evaluation benchmark: the tables of `periscope evaluate`, plus plots and files.

Replays the scheduled retrain over a span the models never saw (see `ml/evaluation.py`),
prints the same tables as `periscope evaluate`, the cost of each retrain and of the whole run,
and saves under --out: relative MAE by month and by horizon as a PNG, the summary as CSV and
every judged forecast as Parquet (to plot again without re-running).

    python bench/evaluate.py --source weather                      # last 3 months, all stations
    python bench/evaluate.py --stations denver,boston --from 2017-04-01 --to 2017-04-15
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from ml.cli import print_evaluation
from ml.evaluation import BUCKETS, EvaluationRun, Retrain, run_evaluation
from periscope import get_settings


def plot(run: EvaluationRun, path: Path) -> None:
    """Relative MAE (model and persistence over seasonal naive) by month and by horizon bucket,
    the model's with its 90% interval shaded."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    summary = run.summary
    fig, (by_month, by_horizon) = plt.subplots(1, 2, figsize=(12, 4.5))
    buckets = [label for _, _, label in BUCKETS]
    for measure, rows in summary.groupby("measure", sort=False):
        months = rows[rows["by"] == "month"]
        line = by_month.plot(
            months["group"], months["relative_mae"], marker="o", label=str(measure)
        )[0]
        horizons = rows[(rows["by"] == "horizon") & rows["group"].isin(buckets)]
        by_horizon.plot(
            horizons["group"],
            horizons["relative_mae"],
            marker="o",
            color=line.get_color(),
            label=f"{measure} model",
        )
        for axis, part in ((by_month, months), (by_horizon, horizons)):  # the 90% intervals
            axis.fill_between(
                part["group"],
                part["relative_mae_low"],
                part["relative_mae_high"],
                color=line.get_color(),
                alpha=0.15,
                linewidth=0,
            )
        by_horizon.plot(
            horizons["group"],
            horizons["relative_mae_persistence"],
            marker="x",
            linestyle=":",
            color=line.get_color(),
            label=f"{measure} persistence",
        )
    for axis, title in ((by_month, "by month of issue"), (by_horizon, "by horizon")):
        axis.axhline(1.0, color="grey", linewidth=1)
        axis.set_title(f"relative MAE (/ seasonal naive), {title}")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    fig.suptitle(
        f"{run.source} walk-forward {run.start:%Y-%m-%d} .. {run.end:%Y-%m-%d}, "
        f"retrain {run.retrain_every}, {run.entities} entities"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="weather")
    parser.add_argument(
        "--from", dest="start", help="First retrain (UTC date); default: 3 months before --to."
    )
    parser.add_argument(
        "--to",
        dest="end",
        help="End of the span (exclusive); default: after the last full month of data.",
    )
    parser.add_argument("--stations", help="Comma-separated entity ids; default: all.")
    parser.add_argument(
        "--retrain-every", default="monthly", help="monthly, weekly, daily, 7d, 12h ..."
    )
    parser.add_argument("--workers", type=int, default=None, help="Processes fitting in parallel.")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".local/bench"),
        help="Folder for the PNG, CSV and Parquet.",
    )
    args = parser.parse_args()

    console = Console()
    started = time.perf_counter()

    def retrained(r: Retrain) -> None:
        console.print(
            f"[{(time.perf_counter() - started) / 60:5.1f} min] {r.at:%Y-%m-%d} retrain "
            f"{r.challenger}: {r.series} series fitted in {r.fit_seconds:.0f} s "
            f"({r.fit_seconds / max(r.series, 1):.2f} s/series); challenger {r.challenger_score:.4f} "
            f"vs champion {r.champion_score:.4f}; serving {r.champion}",
            highlight=False,
        )

    run = run_evaluation(
        get_settings(),
        args.source,
        start=pd.Timestamp(args.start) if args.start else None,
        end=pd.Timestamp(args.end) if args.end else None,
        retrain_every=args.retrain_every,
        entities=[s for s in (args.stations or "").split(",") if s] or None,
        workers=args.workers,
        on_start=lambda data, times: console.print(f"data: {data}; {len(times)} retrains"),
        on_retrain=retrained,
    )
    print_evaluation(run, out_console=console)
    fits = [r.fit_seconds for r in run.evaluation.retrains]
    console.print(
        f"cost: {len(fits)} retrains, fit {sum(fits) / len(fits):.0f} s each on average "
        f"(the rest of a retrain is the promotion comparison and scoring); whole run "
        f"{run.seconds / 60:.1f} min",
        highlight=False,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"evaluate_{run.source}_{run.start:%Y%m%d}_{run.end:%Y%m%d}_{run.retrain_every}"
    run.summary.to_csv(args.out / f"{stem}_summary.csv", index=False)
    run.evaluation.errors.to_parquet(args.out / f"{stem}_forecasts.parquet", index=False)
    plot(run, args.out / f"{stem}.png")
    console.print(
        f"saved {args.out / stem}.png, _summary.csv and _forecasts.parquet", highlight=False
    )


if __name__ == "__main__":
    main()
