"""Anomaly detection on months the model never saw: injected episodes, per kind and magnitude.

Trains the detectors on a span of the shared history, chooses their thresholds on the next
span (injected anomalies, every kind at magnitudes 0.5, 1 and 2, `--repeats` independent
injections), and tests on the span after that, with other injections. The train and validation
spans and the validation's injections are production's (`TrainConfig`, VALIDATION_REPEATS). Prints, per detector
alone and combined: window-level precision / recall / F1, the false-alarm rate on clean
windows, recall per kind and magnitude (windows, and episodes with at least one flagged
window). Reads the shared data directly (no lake, no Ray).

    python bench/anomaly_eval.py --source weather
    python bench/anomaly_eval.py --source weather --stations denver boston --repeats 2
    python bench/anomaly_eval.py --source weather --measures temperature humidity pressure
    python bench/anomaly_eval.py --source weather --test-end 2017-01-01      # an earlier span, to choose on
    python bench/anomaly_eval.py --source weather --no-learned               # the rule detectors alone
    python bench/anomaly_eval.py --source air_quality --test-days 60 --validation-days 60
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import track

from ml import anomaly
from ml.evaluation import INTERVAL_BLOCK_DAYS, INTERVAL_LEVEL, block_interval
from ml.training import TrainConfig
from ml.training.anomalies import (
    MAGNITUDES,
    VALIDATION_REPEATS,
    InjectedSet,
    fit_learned,
    injected_sets,
    set_scores,
)
from ml.windows import window_features
from periscope.contracts import SourceContract, get_contract

DATA_DIR = Path("/work/shared/data")
TARGET_FALSE_ALARM = 0.005  # issue 16's ceiling on false alarms (production keeps a margin)


def hourly_history(contract: SourceContract, stations: list[str] | None) -> pd.DataFrame:
    """The source's real history as hourly rows: key, ds (naive UTC), the measures."""
    frame = contract.dataset_reader().read(DATA_DIR, entities=stations).to_pandas()
    time_column = "timestamp" if "timestamp" in frame.columns else contract.event_time_field
    frame["ds"] = pd.to_datetime(frame[time_column], utc=True).dt.tz_localize(None).dt.floor("h")
    hourly = frame.groupby([contract.key_field, "ds"], as_index=False)[
        list(contract.measure_names)
    ].mean()
    for m in contract.measure_names:  # sentinels and out-of-range readings are silver's rejects
        measure = contract.measure(m)
        hourly[m] = hourly[m].where(hourly[m].between(measure.valid_min, measure.valid_max))
    return hourly


def spans(
    hourly: pd.DataFrame, args: argparse.Namespace
) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    end = pd.Timestamp(args.test_end) if args.test_end else hourly["ds"].max().floor("D")
    day = pd.Timedelta(days=1)
    test_start = end - args.test_days * day
    validation_start = test_start - args.validation_days * day
    return {
        "train": (validation_start - args.train_days * day, validation_start),
        "validation": (validation_start, test_start),
        "test": (test_start, end),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="weather", help="weather or air_quality")
    parser.add_argument("--stations", nargs="*", help="Entities to use (default: all).")
    production = TrainConfig()
    parser.add_argument(
        "--train-days",
        type=float,
        default=production.max_train_days,
        help="Days the detectors learn from (default: production's, %(default)s).",
    )
    parser.add_argument(
        "--validation-days",
        type=float,
        default=production.validation_days,
        help="Days the thresholds are chosen on (default: production's, %(default)s).",
    )
    parser.add_argument("--test-days", type=float, default=60.0)
    parser.add_argument("--test-end", help="End of the test span (default: end of the data).")
    parser.add_argument("--rate", type=float, default=0.02, help="Share of readings altered.")
    parser.add_argument(
        "--repeats", type=int, default=5, help="Injections into the test span (default 5)."
    )
    parser.add_argument(
        "--validation-repeats",
        type=int,
        default=VALIDATION_REPEATS,
        help="Injections into the validation span (default: production's, %(default)s).",
    )
    parser.add_argument(
        "--measures", nargs="*", help="Inject into these measures only (default: all)."
    )
    parser.add_argument(
        "--max-false-alarm",
        type=float,
        default=production.anomaly_max_false_alarm,
        help="Share of validation's clean windows the thresholds may flag (default: "
        "production's, %(default)s).",
    )
    parser.add_argument("--estimators", type=int, default=200)
    parser.add_argument(
        "--no-learned",
        action="store_true",
        help="Leave the learned detector out (the rules alone).",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    contract = get_contract(args.source)
    started = time.perf_counter()
    hourly = hourly_history(contract, args.stations)
    parts = spans(hourly, args)
    print(
        f"{args.source}: {hourly[contract.key_field].nunique()} entities; "
        + "; ".join(f"{name} {a:%Y-%m-%d} .. {b:%Y-%m-%d}" for name, (a, b) in parts.items())
    )

    train_start, train_end = parts["train"]
    train_hours = hourly[(hourly["ds"] >= train_start) & (hourly["ds"] < train_end)]
    train_observations = train_hours.rename(columns={"ds": "event_time"})
    train_features = window_features(train_observations, anomaly.anomaly_contract(contract))
    train_features = train_features[train_features["window_end"] <= train_end]
    model = anomaly.fit_anomaly_model(
        train_features, contract, hourly=train_hours, n_estimators=args.estimators, seed=0
    )
    print(f"trained on {len(train_features):,} windows in {time.perf_counter() - started:.0f} s")
    if not args.no_learned:
        learned_started = time.perf_counter()
        fit_learned(model, train_hours, contract, replace(production, anomaly_rate=args.rate))
        print(
            f"learned detector: fitted on faults injected into the last "
            f"{production.anomaly_learned_days:.0f} training days in "
            f"{time.perf_counter() - learned_started:.0f} s"
        )

    def injected(name: str, seed: int, repeats: int) -> tuple[list[InjectedSet], pd.DataFrame]:
        a, b = parts[name]
        sets = []
        for r in track(range(repeats), description=f"injecting {name}"):
            sets += injected_sets(
                hourly,
                contract,
                a,
                b,
                rate=args.rate,
                seed=seed + r,
                repeats=1,
                measures=args.measures,
            )
        started = time.perf_counter()
        scores = set_scores(model, sets)
        seconds = time.perf_counter() - started
        print(
            f"{name}: scored {len(scores):,} windows with their hourly history in {seconds:.1f} s "
            f"= {len(scores) / seconds:,.0f} windows/s (every detector, one process)"
        )
        return sets, scores

    validation, validation_scores = injected("validation", args.seed, args.validation_repeats)
    validation_truth = np.concatenate([s.truth for s in validation])
    model.set_thresholds(validation_scores, validation_truth, max_false_alarm=args.max_false_alarm)
    print(
        "thresholds (validation): " + ", ".join(f"{d} {t:.3g}" for d, t in model.thresholds.items())
    )
    report(
        model,
        validation,
        validation_scores,
        contract,
        "validation",
        brief=True,
        max_false_alarm=args.max_false_alarm,
    )
    test, test_scores = injected("test", args.seed + 10_000, args.repeats)
    report(
        model,
        test,
        test_scores,
        contract,
        "test",
        brief=False,
        max_false_alarm=args.max_false_alarm,
    )
    a, b = parts["test"]
    clean_test = hourly[(hourly["ds"] >= a) & (hourly["ds"] < b)]
    natural_repeats(clean_test, test, model, contract, TARGET_FALSE_ALARM)
    natural_spikes(clean_test, model, contract, TARGET_FALSE_ALARM)
    visibility(clean_test, test, test_scores, model, contract)
    print(f"total {time.perf_counter() - started:.0f} s")


def natural_repeats(
    clean: pd.DataFrame,
    sets: list[InjectedSet],
    model: anomaly.AnomalyModel,
    contract: SourceContract,
    budget: float,
) -> None:
    """How often each measure repeats itself in clean readings, and what that leaves a stuck
    detector: a frozen sensor must outlast a calm spell to be told from one (a measure
    reported in whole units repeats often). For each measure, the shortest run of repeats
    that no more than `budget` of clean hours reach, and the share of the injected stuck
    episodes whose run reaches it: what flagging on the run alone could catch."""
    key = contract.key_field
    measures = list(model.hourly_stats.measures if model.hourly_stats else [])
    if not measures:
        return
    grid = anomaly.HourlyGrid.of(clean, key, measures)
    observed = np.isfinite(grid.values)
    runs = grid.signals["run"]
    lengths = np.arange(1, runs.max(initial=0) + 2)
    longest = []  # (measure, the longest run inside each injected stuck episode)
    for s in sets:
        stuck = s.labels[s.labels["kind"] == "stuck"]
        injected = anomaly.HourlyGrid.of(s.observations, key, measures)
        row = pd.Index(injected.entities).get_indexer(stuck[key].astype(str).to_numpy())
        hours = stuck["event_time"].to_numpy("datetime64[h]").astype("int64")
        hour = hours - injected.first_hour
        column = [measures.index(m) for m in stuck["measure"]]
        run = injected.signals["run"][row, hour, column]
        longest.append(
            pd.DataFrame(
                {
                    "measure": stuck["measure"].to_numpy(),
                    "episode": stuck["episode"].to_numpy(),
                    "run": run,
                }
            )
            .groupby(["measure", "episode"])["run"]
            .max()
        )
    episodes = pd.concat(longest).reset_index()
    shown = (2, 4, 8, 12)
    print(
        f"\nclean test hours in a run of r repeats of the reading before, and the stuck episodes"
        f" a run alone could catch at <= {budget:.1%} of clean hours (runs counted up to 12)"
    )
    print(
        f"{'measure':<12} "
        + " ".join(f"{f'r>={r}':>7}" for r in shown)
        + f" {'shortest r':>10} {'episodes':>9} {'caught':>7}"
    )
    caught_all = []
    for j, measure in enumerate(measures):
        values = runs[..., j][observed[..., j]]
        share = {int(r): float((values >= r).mean()) if len(values) else 0.0 for r in lengths}
        shortest = min((r for r in share if share[r] <= budget), default=None)
        mine = episodes[episodes["measure"] == measure]["run"]
        # No run rare enough: a run alone catches nothing without passing the ceiling.
        caught = mine >= shortest if shortest is not None else pd.Series(False, index=mine.index)
        caught_all.append(caught)
        print(
            f"{measure:<12} "
            + " ".join(f"{share.get(r, 0.0):>7.2%}" for r in shown)
            + f" {shortest if shortest is not None else 'none':>10} {len(mine):>9}"
            f" {caught.mean() if len(mine) else float('nan'):>7.3f}"
        )
    caught = pd.concat(caught_all)
    print(f"stuck episodes a run alone could catch: {caught.mean():.3f} of {len(caught)}")


def natural_spikes(
    clean: pd.DataFrame, model: anomaly.AnomalyModel, contract: SourceContract, budget: float
) -> None:
    """How often a clean reading already looks like an injected spike: off both the reading
    before and the one after, the same way, by k sigma (the station's std of the measure, as
    `inject_anomalies` sizes spikes: 2-4 sigma at magnitude 0.5). The spike detector judges a
    reading in the 2 windows it is not the last hour of, so flagging every such lookalike
    costs about twice its share of hours in false alarms: where that passes `budget`, spikes
    of that size cannot all be caught without passing it."""
    key = contract.key_field
    measures = list(model.hourly_stats.measures if model.hourly_stats else [])
    if not measures:
        return
    grid = anomaly.HourlyGrid.of(clean, key, measures)
    sigma = clean.groupby(key)[measures].std().reindex(grid.entities).to_numpy()
    steps = grid.signals["steps"][..., :2]  # from the reading before, to the one after
    same_way = np.sign(steps[..., 0]) == np.sign(steps[..., 1])
    size = np.where(same_way, np.abs(steps).min(axis=-1), 0.0) / sigma[:, None, :]
    observed = np.isfinite(grid.values)
    shown = (1, 2, 3, 4)
    print(
        f"\nclean test hours off both neighbours the same way by >= k sigma (a spike's shape;"
        f" flagging them all costs ~2x their share in false alarms, budget {budget:.1%})"
    )
    print(f"{'measure':<12} " + " ".join(f"{f'k={k}':>7}" for k in shown))
    for j, measure in enumerate(measures):
        x = size[..., j][observed[..., j]]
        print(
            f"{measure:<12} " + " ".join(f"{np.mean(x >= k) if len(x) else 0:>7.2%}" for k in shown)
        )


def visibility(
    clean: pd.DataFrame,
    sets: list[InjectedSet],
    scores: pd.DataFrame,
    model: anomaly.AnomalyModel,
    contract: SourceContract,
) -> None:
    """Recall of the anomalous windows by how far their readings were moved: the largest
    |altered - real| of a window's altered readings, in units of the station's typical hourly
    change of that measure (the median |change from the hour before| in the clean span, at
    least half a unit: whole-unit readings). A frozen sensor in a calm spell, or a drift's first
    hours, moves a reading by less than the weather moves it in an hour."""
    key = contract.key_field
    measures = list(model.hourly_stats.measures if model.hourly_stats else [])
    if not measures:
        return
    real = clean.set_index([key, "ds"])[measures]
    typical = real.groupby(level=0).diff().abs().groupby(real.index.get_level_values(0)).median()
    typical = typical.clip(lower=0.5)
    size = pd.Timedelta(contract.window.size)
    slide = pd.Timedelta(contract.window.slide)
    bins = [0, 1, 2, 4, 8, np.inf]
    # The sets' flags, one after the other as `scores` holds them.
    flags = np.split(
        model.combine(scores)[0] >= model.threshold, np.cumsum([len(s.features) for s in sets])[:-1]
    )
    rows = []
    for s, flagged in zip(sets, flags, strict=True):
        labels = s.labels.copy()
        times = pd.to_datetime(labels["event_time"], utc=True).dt.tz_localize(None)
        at = pd.MultiIndex.from_arrays([labels[key], times])
        altered = s.observations.assign(ds=pd.to_datetime(s.observations["event_time"], utc=True))
        altered = altered.assign(ds=altered["ds"].dt.tz_localize(None)).set_index([key, "ds"])
        before, after = real.reindex(at), altered[measures].reindex(at)
        column = [measures.index(m) for m in labels["measure"]]
        rows_at = np.arange(len(labels))
        moved = np.abs(after.to_numpy()[rows_at, column] - before.to_numpy()[rows_at, column])
        scale = typical.reindex(labels[key]).to_numpy()[rows_at, column]
        labels["moved"] = moved / scale
        # Each reading lies in the windows starting within `size` before it (sliding by `slide`).
        starts = [
            labels.assign(window_start=times.dt.floor(slide) - k * slide)
            for k in range(int(size / slide))
        ]
        per_window = (
            pd.concat(starts)
            .groupby([key, "window_start"])
            .agg(moved=("moved", "max"), kind=("kind", "first"))
        )
        features = s.features.assign(
            window_start=pd.to_datetime(s.features["window_start"], utc=True).dt.tz_localize(None)
        )
        joined = features[[key, "window_start"]].join(per_window, on=[key, "window_start"])
        anomalous = s.truth.to_numpy()
        rows.append(
            pd.DataFrame(
                {
                    "kind": joined["kind"].to_numpy()[anomalous],
                    "moved": joined["moved"].to_numpy()[anomalous],
                    "flagged": flagged[anomalous],
                }
            )
        )
    windows = pd.concat(rows, ignore_index=True)
    windows["by"] = pd.cut(windows["moved"], bins, right=False)
    print(
        "\nanomalous test windows by how far their readings were moved (in the station's typical"
        " hourly change), and the share flagged"
    )
    table = windows.pivot_table(
        index="by", columns="kind", values="flagged", aggfunc=["size", "mean"], observed=False
    )
    print(f"{'moved':<12} " + " ".join(f"{k:>16}" for k in anomaly.ANOMALY_KINDS) + f" {'all':>16}")
    for interval in table.index:
        cells = []
        for kind in anomaly.ANOMALY_KINDS:
            n = table.loc[interval, ("size", kind)] if ("size", kind) in table.columns else 0
            n = 0 if pd.isna(n) else int(n)
            share = table.loc[interval, ("mean", kind)] if n else float("nan")
            cells.append(f"{n:>7} {share:>8.3f}")
        part = windows[windows["by"] == interval]
        cells.append(
            f"{len(part):>7} {part['flagged'].mean() if len(part) else float('nan'):>8.3f}"
        )
        label = f"{interval.left:g}-{interval.right:g}"
        print(f"{label:<12} " + " ".join(cells))


def report(
    model: anomaly.AnomalyModel,
    sets: list[InjectedSet],
    scores: pd.DataFrame,
    contract: SourceContract,
    name: str,
    *,
    brief: bool,
    max_false_alarm: float,
) -> None:
    """Print the figures of one injected span (`max_false_alarm`: the budget the thresholds
    were chosen at)."""
    truth = np.concatenate([s.truth for s in sets])
    clean = ~truth
    episodes = sum(s.labels["episode"].nunique() for s in sets)
    print(
        f"\n== {name}: {len(truth):,} windows, {int(truth.sum()):,} anomalous, {episodes:,} episodes"
    )
    combined, kinds = model.combine(scores)
    flags = {d: scores[d].to_numpy() >= model.thresholds[d] for d in anomaly.DETECTORS}
    flags["combined"] = combined >= model.threshold
    print(f"{'detector':<10} {'precision':>9} {'recall':>7} {'F1':>6} {'false alarms':>13}")
    for detector, flagged in flags.items():
        m = anomaly.detection_metrics(truth, flagged)
        far = (flagged & clean).sum() / max(clean.sum(), 1)
        print(
            f"{detector:<10} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {far:>12.3%}"
        )
    if brief:
        return
    # How far other days would move the figures: every injection's windows of the same days
    # share their weather, so the bootstrap draws blocks of days, as the forecasts' does.
    starts = pd.to_datetime(
        pd.concat([s.features["window_start"] for s in sets]), utc=True
    ).dt.floor("D")
    block = ((starts - starts.min()).dt.days // INTERVAL_BLOCK_DAYS).to_numpy()
    hit = flags["combined"]
    f1_low, f1_high = block_interval(
        2.0 * (hit & truth), 2.0 * (hit & truth) + (hit & clean) + (~hit & truth), block
    )
    far_low, far_high = block_interval(1.0 * (hit & clean), 1.0 * clean, block)
    print(
        f"combined, {INTERVAL_LEVEL:.0%} intervals over {INTERVAL_BLOCK_DAYS}-day blocks of days: "
        f"F1 {f1_low:.3f}-{f1_high:.3f}, false alarms {far_low:.3%}-{far_high:.3%}"
    )
    # What these detectors' scores could give with the best thresholds for this very span, which
    # no production run can know: a ceiling on threshold choice, not a result.
    for budget in sorted({max_false_alarm, TARGET_FALSE_ALARM}):
        oracle = replace(model)
        oracle.set_thresholds(scores, truth, max_false_alarm=budget)
        hit = oracle.combine(scores)[0] >= oracle.threshold
        m = anomaly.detection_metrics(truth, hit)
        print(
            f"thresholds chosen on {name} itself at <= {budget:.2%} false alarms (a ceiling): "
            f"F1 {m['f1']:.3f} (precision {m['precision']:.3f}, recall {m['recall']:.3f})"
        )

    # Recall per kind and magnitude: of windows holding such a reading, and of episodes.
    rows = []
    episode_rows = []
    offset = 0
    for s in sets:
        n = len(s.features)
        flagged = flags["combined"][offset : offset + n]
        for magnitude in MAGNITUDES:
            part = s.labels[s.labels["magnitude"] == magnitude]
            by_window = anomaly.label_windows_by_kind(s.features, part, contract)
            for kind in anomaly.ANOMALY_KINDS:
                holds = by_window[kind].to_numpy()
                rows.append((kind, magnitude, int(holds.sum()), int((holds & flagged).sum())))
        caught = anomaly.episode_recall(s.features, flagged, s.labels, contract)
        caught["measure"] = caught["episode"].map(s.labels.groupby("episode")["measure"].first())
        episode_rows.append(caught)
        offset += n
    windows = pd.DataFrame(rows, columns=["kind", "magnitude", "windows", "found"])
    caught = pd.concat(episode_rows, ignore_index=True)
    print("\nrecall of the combined flag (windows holding an altered reading; episodes caught)")
    print(
        f"{'kind':<8} {'magnitude':>9} {'windows':>8} {'recall':>7} {'episodes':>9} {'recall':>7}"
    )
    for kind in anomaly.ANOMALY_KINDS:
        for magnitude in [*MAGNITUDES, 0.0]:  # 0: all magnitudes
            w = windows[(windows["kind"] == kind)]
            e = caught[caught["kind"] == kind]
            if magnitude:
                w, e = w[w["magnitude"] == magnitude], e[e["magnitude"] == magnitude]
            w_total, w_found = int(w["windows"].sum()), int(w["found"].sum())
            print(
                f"{kind:<8} {magnitude or 'all'!s:>9} {w_total:>8} {w_found / max(w_total, 1):>7.3f} "
                f"{len(e):>9} {e['caught'].sum() / max(len(e), 1):>7.3f}"
            )
    print(
        f"all episodes: {int(caught['caught'].sum())} of {len(caught)} caught "
        f"({caught['caught'].mean():.3f})"
    )
    by_measure = caught.pivot_table(
        index="measure", columns="kind", values="caught", aggfunc="mean"
    )
    print("\nepisode recall by measure (rows) and kind (columns)")
    print(by_measure.round(3).to_string())
    # Which detector named the flagged anomalous windows, by kind injected.
    named = pd.Series(kinds[flags["combined"] & truth], dtype=object).value_counts()
    print(
        "\nflagged anomalous windows by detector: "
        + ", ".join(f"{d} {n}" for d, n in named.items())
    )
    false = pd.Series(kinds[flags["combined"] & clean], dtype=object).value_counts()
    print(
        "false alarms by detector: " + (", ".join(f"{d} {n}" for d, n in false.items()) or "none")
    )


if __name__ == "__main__":
    main()
