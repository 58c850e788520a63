"""`periscope train | retrain | models ... | scheduler ...` (mounted through entry points)."""

from __future__ import annotations

import math
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from periscope import get_settings
from periscope.cli_options import source_argument, source_option
from periscope.contracts import CONTRACTS, get_contract
from periscope.output import Column, FormatOption, print_rows, print_table

__all__ = [
    "evaluate_app",
    "models_app",
    "print_evaluation",
    "retrain_app",
    "scheduler_app",
    "score_app",
    "train_app",
]

console = Console()
err_console = Console(stderr=True)

Sources = Annotated[
    list[str] | None, source_option("Source to train (repeatable); default: every source.")
]
Kinds = Annotated[
    list[str] | None,
    typer.Option(
        "--kind",
        "-k",
        help="forecast, anomaly and/or trip (taxi's trip regressor) (repeatable); default: "
        "every kind the source has.",
    ),
]


def _sources(sources: list[str] | None) -> list[str]:
    # The --source option has checked the names against the contracts already.
    return list(sources or CONTRACTS)


def _kinds(kinds: list[str] | None, source: str) -> tuple[str, ...]:
    """The kinds asked for that `source` has (taxi alone has `trip`); all of them by default."""
    from ml.registry import EVENT_KINDS, MODEL_KINDS, source_kinds

    known = (*MODEL_KINDS, *EVENT_KINDS)
    unknown = sorted(set(kinds or ()) - set(known))
    if unknown:
        raise typer.BadParameter(
            f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return tuple(k for k in (kinds or known) if k in source_kinds(source))


def _train(
    sources,
    stations,
    until,
    kinds,
    policy,
    workers,
    test_days,
    validation_days,
    max_train_days,
    missing_only=False,
) -> None:
    from ml.registry import Registry

    settings = get_settings()
    # One registry for the champion checks; training's imports (scikit-learn, Prophet) wait
    # until something is to be trained: a demo rerun only asks the registry.
    registry = Registry(settings) if missing_only else None
    for source in _sources(sources):
        chosen = _kinds(kinds, source)
        if not chosen:
            console.print(f"[bold]{source}[/]: has none of the kinds asked for; nothing to train")
            continue
        if registry is not None:
            chosen = tuple(
                k
                for k in chosen
                if registry.champion_version(source, k) is None
                or (k == "forecast" and registry.stale_forecast_champion(source))
            )
            if not chosen:
                console.print(f"[bold]{source}[/]: champions exist; nothing to train")
                continue
        from ml.data import LakeSlice
        from ml.training import TrainConfig, run_training

        config = TrainConfig(
            test_days=test_days, validation_days=validation_days, max_train_days=max_train_days
        )
        lake_slice = LakeSlice(stations=tuple(stations) if stations else None, until=until)
        with Progress(
            TextColumn(f"[bold]{source}[/] training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("models"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task(source, total=None)
            report = run_training(
                settings,
                source,
                lake_slice=lake_slice,
                kinds=chosen,
                config=config,
                policy=policy,
                workers=workers,
                on_total=partial(_set_total, progress, task),
                on_progress=partial(progress.advance, task),
            )
        _print_report(report)


def _set_total(progress: Progress, task: TaskID, total: int) -> None:
    progress.update(task, total=total)


def _print_report(report) -> None:
    split = report.split
    console.print(
        f"[bold]{report.source}[/]: train {split.train_start} .. {split.train_end}, "
        f"validation .. {split.validation_end}, test .. {split.test_end}",
        highlight=False,
    )
    if report.forecast is not None:
        overall = report.forecast.overall
        table = Table(
            title=f"{report.source} forecasts on the test window (1..{report.forecast.bundle.config.horizon_hours} h ahead)"
        )
        table.add_column("method")
        for metric in ("MAE", "RMSE", "MAPE %"):
            table.add_column(metric, justify="right")
        for method in ("served", "prophet", "gbm", "seasonal_naive", "persistence"):
            table.add_row(
                method,
                *[
                    f"{overall.get(f'{m}_{method}', float('nan')):.3f}"
                    for m in ("mae", "rmse", "mape")
                ],
            )
        print_table(table, console=console)
        from ml.forecast import error_metrics

        by_measure = error_metrics(report.forecast.errors, by=["measure"])
        table = Table(title="MAE per measure (test window)")
        for column in ("measure", "served", "seasonal naive", "persistence", "coverage"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for row in by_measure.itertuples():
            table.add_row(
                str(row.measure),
                *[
                    f"{getattr(row, f'mae_{m}'):.3f}"
                    for m in ("served", "seasonal_naive", "persistence")
                ],
                f"{row.coverage:.2f}",
            )
        print_table(table, console=console)
        console.print(
            f"series trained {len(report.forecast.bundle.series())}, skipped {len(report.forecast.skipped)}; "
            f"relative MAE (served / seasonal naive) {report.forecast.score:.3f}; "
            f"interval coverage {overall.get('coverage', float('nan')):.2f}",
            highlight=False,
        )
    if report.anomaly is not None:
        m = report.anomaly.metrics
        console.print(
            f"anomalies (injected test set): precision {m['precision']:.3f} recall {m['recall']:.3f} "
            f"F1 {m['f1']:.3f} (threshold from validation {report.anomaly.model.threshold:.4f})",
            highlight=False,
        )
    if report.trip is not None:
        _print_trip_table(report.trip.training)
    for kind, info in report.registered.items():
        console.print(
            f"[green]✔[/] {info.name} version {info.version}: {report.decisions[kind]}",
            highlight=False,
        )


def _print_trip_table(training) -> None:
    table = Table(title="taxi trip regressor on the test week (trips silver accepts)")
    for column in ("target", "model", "MAE", "RMSE", "R²"):
        table.add_column(column, justify="left" if column in ("target", "model") else "right")
    for row in training.table.itertuples():
        name = row.model if row.model != "tree" else f"tree ({training.model.chosen[row.target]})"
        table.add_row(row.target, name, f"{row.mae:.3f}", f"{row.rmse:.3f}", f"{row.r2:.3f}")
    print_table(table, console=console)


Until = Annotated[
    datetime | None,
    typer.Option(help="Train only on observations before this date (UTC), e.g. 2013-03-01."),
]
Workers = Annotated[
    int | None, typer.Option(min=1, help="Ray workers (default: PERISCOPE_TRAIN_WORKERS).")
]
TestDays = Annotated[
    float, typer.Option(min=0.5, help="Days at the end held back as the test window.")
]
ValidationDays = Annotated[
    float, typer.Option(min=0.5, help="Days before the test window for validation.")
]
MaxTrainDays = Annotated[
    float, typer.Option(min=3, help="At most this many days of training history.")
]

train_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@train_app.callback()
def train(
    source: Sources = None,
    stations: Annotated[
        list[str] | None,
        typer.Option(
            "--stations", "--station", help="Station ids to train (repeatable); default: all."
        ),
    ] = None,
    until: Until = None,
    kind: Kinds = None,
    promote: Annotated[
        bool, typer.Option(help="Make the new version champion when there is none yet.")
    ] = True,
    workers: Workers = None,
    test_days: TestDays = 7.0,
    validation_days: ValidationDays = 7.0,
    max_train_days: MaxTrainDays = 120.0,
    missing_only: Annotated[
        bool,
        typer.Option(
            "--missing-only", help="Train only the models that have no champion yet (make demo)."
        ),
    ] = False,
) -> None:
    """Train each source's models on silver data, on Ray.

    Forecasts: per measure and horizon, the best on validation of Prophet, a
    global boosted-trees model and the seasonal-naive and persistence baselines
    (never one worse than seasonal-naive), with conformal bands. Anomalies: an
    IsolationForest with spike, residual, stuck, drift and dropout detectors, and a
    classifier learnt from faults injected into the training span. Taxi also
    trains its trip regressor. Every model is registered in MLflow with its
    metrics; the first version of a model becomes `champion`.
    """
    _train(
        source,
        stations,
        until,
        kind,
        "if-none" if promote else "never",
        workers,
        test_days,
        validation_days,
        max_train_days,
        missing_only,
    )


retrain_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@retrain_app.callback()
def retrain(
    source: Sources = None,
    kind: Kinds = None,
    workers: Workers = None,
    test_days: TestDays = 7.0,
    validation_days: ValidationDays = 7.0,
    max_train_days: MaxTrainDays = 120.0,
) -> None:
    """Train a challenger on the latest lake data; promote it only if it beats the champion.

    Both are scored on the challenger's test window (forecasts: relative MAE; anomalies: F1).
    """
    _train(
        source, None, None, kind, "if-better", workers, test_days, validation_days, max_train_days
    )


# --- models --------------------------------------------------------------------------------
models_app = typer.Typer(
    help="Registered models: list, inspect, promote, roll back.", no_args_is_help=True
)

Source = Annotated[str, source_argument("The source.")]
Kind = Annotated[
    str, typer.Argument(help="forecast, anomaly, or trip (taxi's per-trip regressor).")
]


def _model_kind(source: str, kind: str) -> str:
    """The kind, checked against the kinds this source has (a clear error, not MLflow's)."""
    from ml.registry import source_kinds

    if kind not in source_kinds(source):
        raise typer.BadParameter(
            f"{source} has no {kind!r} model; its kinds: {', '.join(source_kinds(source))}"
        )
    return kind


def _registry():
    from ml.registry import Registry

    return Registry(get_settings())


_MODEL_COLUMNS = (
    Column("model"),
    Column("version", justify="right"),
    Column("champion", show=lambda is_champion: "★" if is_champion else ""),
    Column("created", show=lambda created: f"{created:%Y-%m-%d %H:%M}"),
    Column("data until"),
    Column("key metric"),
    Column("value", justify="right", show=lambda value: f"{value:.3f}"),
    Column("code"),
)


@models_app.command("list")
def models_list(fmt: FormatOption = "table") -> None:
    """Every registered version, its key metric and which one is champion (★)."""
    registry = _registry()
    rows = []
    for name in registry.model_names():
        metric = {"_forecast": "relative_mae", "_trip": "duration_mae"}.get(
            name[name.rfind("_") :], "f1"
        )
        for info in registry.versions(name):
            rows.append(
                (
                    name,
                    info.version,
                    info.is_champion,
                    info.created,
                    info.tags.get("data_until", ""),
                    metric,
                    info.metrics.get(metric),
                    info.tags.get("code_version", ""),
                )
            )
    print_rows(
        _MODEL_COLUMNS,
        rows,
        fmt=fmt,
        title=f"Registered models ({registry.uri})",
        null="-",
        console=console,
    )


@models_app.command("show")
def models_show(
    source: Source,
    kind: Kind,
    version: Annotated[str, typer.Argument(help="A version number or alias.")] = "champion",
) -> None:
    """Parameters, metrics and tags of one version (default: the champion)."""
    from periscope.errors import PeriscopeError

    info = _registry().resolve(get_contract(source).name, _model_kind(source, kind), version)
    if info is None:
        raise PeriscopeError(f"{source}_{kind} has no {version} yet: run `periscope train`")
    console.print(
        f"[bold]{info.name}[/] version {info.version} (run {info.run_id}) aliases: {', '.join(info.aliases) or '-'}"
    )
    for title, values in (("metrics", info.metrics), ("tags", info.tags), ("params", info.params)):
        table = Table(title=title)
        table.add_column("name")
        table.add_column("value")
        for key in sorted(values):
            value = values[key]
            table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
        print_table(table, console=console)


@models_app.command("promote")
def models_promote(
    source: Source,
    kind: Kind,
    version: Annotated[int, typer.Argument(help="The version to promote.")],
    force: Annotated[
        bool, typer.Option("--force", help="Skip the comparison with the champion.")
    ] = False,
) -> None:
    """Promote a version to champion if it beats the champion on its own test window.

    The rule `retrain` applies: forecasts on relative MAE, anomalies on F1, taxi's trip
    regressor on duration MAE (on the lake's trips of the version's test window); ties keep
    the champion. `periscope models promote taxi trip 3`.
    """
    from ml.training import promote_version

    name = get_contract(source).name
    console.print(
        promote_version(get_settings(), name, _model_kind(name, kind), version, force=force)
    )


@models_app.command("rollback")
def models_rollback(source: Source, kind: Kind) -> None:
    """Move `champion` back to the version that held it before."""
    before, after = _registry().rollback(get_contract(source).name, _model_kind(source, kind))
    console.print(f"{source}_{kind}: champion moved back from version {before} to {after}")


@models_app.command("health")
def models_health(
    source: Annotated[
        list[str] | None, source_option("Source to check (repeatable); default: every source.")
    ] = None,
    fmt: FormatOption = "table",
    prometheus: Annotated[
        bool,
        typer.Option("--prometheus", help="Print Prometheus' text format instead of a table."),
    ] = False,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            help="Also write the Prometheus text here, e.g. .local/metrics/forecast_health.prom "
            "for node-exporter's textfile collector."
        ),
    ] = None,
) -> None:
    """The forecasts' rolling 7-day accuracy per source and measure, from the warehouse.

    Reads marts.mart_forecast_health as bi_reader (`periscope dbt build` refreshes it): relative
    MAE (model / seasonal naive, the same hour yesterday) and 80% interval coverage over the
    forecasts whose target hour falls in the source's last 7 days of data. Exit status 0 when
    nothing is breached, 3 when a source is (relative MAE > 1.0 or coverage outside 0.7-0.9).
    """
    from ml.health import any_breach, breach_reasons, read_forecast_health, to_prometheus
    from ml.health import write_prometheus as write_metrics

    rows = read_forecast_health(get_settings(), sources=source)
    if metrics_file is not None:
        write_metrics(rows, metrics_file)
    if prometheus:
        typer.echo(to_prometheus(rows), nl=False)
    else:
        print_rows(
            _HEALTH_COLUMNS,
            [
                (
                    r.source,
                    r.measure or "all",
                    r.window_end,
                    r.forecasts,
                    r.mae,
                    r.mae_seasonal_naive,
                    r.relative_mae,
                    r.coverage,
                    "; ".join(breach_reasons(r)) or "ok",
                )
                for r in rows
            ],
            fmt=fmt,
            title="Forecast health (last 7 days of each source's data)",
            null="-",
            console=console,
        )
    if not rows:
        err_console.print("[yellow]no forecasts with actuals in the warehouse yet[/]")
    if any_breach(rows):
        raise typer.Exit(HEALTH_BREACHED_EXIT)


HEALTH_BREACHED_EXIT = 3  # 1 is an error, 2 a usage error

_HEALTH_COLUMNS = (
    Column("source"),
    Column("measure"),
    Column("data until", show=lambda t: f"{t:%Y-%m-%d %H:%M}"),
    Column("forecasts", justify="right"),
    Column("MAE", justify="right", show=lambda v: f"{v:.3f}"),
    Column("naive MAE", justify="right", show=lambda v: f"{v:.3f}"),
    Column("relative MAE", justify="right", show=lambda v: f"{v:.3f}"),
    Column("coverage", justify="right", show=lambda v: f"{v:.2f}"),
    Column("status"),
)


# --- scheduler -----------------------------------------------------------------------------
scheduler_app = typer.Typer(
    help="The daily retrain and the hourly forecast health check (APScheduler).",
    no_args_is_help=True,
)


@scheduler_app.command("show")
def scheduler_show() -> None:
    """The scheduled jobs and when each runs next."""
    from datetime import UTC

    from ml.training.schedule import HEALTH_CRON, HEALTH_JOB_ID, build_scheduler

    settings = get_settings()
    scheduler = build_scheduler(settings, background=True)
    crons = {HEALTH_JOB_ID: HEALTH_CRON}
    for job in scheduler.get_jobs():
        next_run = job.trigger.get_next_fire_time(None, datetime.now(UTC))
        cron = crons.get(job.id, settings.retrain_cron)
        console.print(f"{job.id}: {job.name}; cron '{cron}' (UTC); next run {next_run}")


@scheduler_app.command("run")
def scheduler_run(
    source: Sources = None,
    now: Annotated[
        bool, typer.Option("--now", help="Run the retrain job once now, then keep the schedule.")
    ] = False,
) -> None:
    """Run the scheduler in the foreground (Ctrl-C stops it)."""
    from ml.training.schedule import HEALTH_CRON, build_scheduler

    scheduler = build_scheduler(
        get_settings(), sources=_sources(source) if source else None, run_now=now
    )
    console.print(
        f"scheduler running; retrain cron '{get_settings().retrain_cron}', forecast health check "
        f"cron '{HEALTH_CRON}' (UTC). Ctrl-C stops it."
    )
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        console.print("scheduler stopped")


# --- score -----------------------------------------------------------------------------------
score_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)


@score_app.callback()
def score(
    source: Annotated[
        list[str] | None, source_option("Source to score (repeatable); default: every source.")
    ] = None,
    available_now: Annotated[
        bool,
        typer.Option(
            "--available-now", help="Score every unscored window, then exit (default: keep going)."
        ),
    ] = False,
    actors: Annotated[
        int | None,
        typer.Option(min=1, help="Ray actors in the pool (default: PERISCOPE_SCORE_ACTORS, 2)."),
    ] = None,
    rescore: Annotated[
        bool,
        typer.Option(
            "--rescore", help="Score every window again (e.g. after promoting a model by hand)."
        ),
    ] = False,
    publish: Annotated[
        bool, typer.Option(help="Also send each prediction to <source>-predictions.")
    ] = True,
) -> None:
    """Score new silver feature windows with the champion models into gold/<source>_predictions.

    A pool of Ray actors loads the champions once and reloads them when `champion` moves.
    Each window gets an anomaly score and flag and forecasts for the coming hours; re-scoring
    a window replaces its row. Runs until stopped (Ctrl-C), or with --available-now until
    every window silver has written is scored.

    A source whose contract predicts measures per event (taxi: each trip's duration and fare)
    also has every new silver observation scored once by its per-event champion into
    gold/<source>_<event>_predictions (the speed layer; taxi: gold/taxi_trip_predictions);
    without that champion its events wait.
    """
    import signal
    import threading

    from ml.data import SilverFeed
    from ml.gold import EventRoundReport, RoundReport, pending_after, run_scoring
    from periscope.metrics import serve_metrics

    settings = get_settings()
    sources = _sources(source)
    stop = threading.Event()

    def request_stop(*_: object) -> None:
        """SIGTERM or the first Ctrl-C: finish the round in flight, then stop; a second forces it."""
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    serve_metrics("score", settings)

    def describe(report: RoundReport) -> str:
        return (
            f"{report.source}: {report.windows:,} windows (silver batches "
            f"{report.silver_after + 1}..{report.silver_through}) with forecast "
            f"v{report.forecast_version or '-'}, anomaly v{report.anomaly_version or '-'} "
            f"-> gold version {report.gold_version} in {report.seconds:.1f} s"
        )

    def describe_events(report: EventRoundReport) -> str:
        return (
            f"{report.source}: {report.events:,} events (silver batches "
            f"{report.silver_after + 1}..{report.silver_through}) with {report.event_model} "
            f"v{report.event_model_version} -> gold version {report.gold_version} "
            f"in {report.seconds:.1f} s"
        )

    if not available_now:
        # SIGINT too: once Ray runs, its driver answers SIGTERM by aborting; supervisors send SIGINT.
        signal.signal(signal.SIGINT, request_stop)
        console.print(f"scoring {', '.join(sources)} as silver writes; Ctrl-C stops")
        try:
            run_scoring(
                settings,
                sources,
                available_now=False,
                actors=actors,
                publish=publish,
                stop=stop,
                rescore=rescore,
                on_round=lambda r: console.print(describe(r)),
                on_event_round=lambda r: console.print(describe_events(r)),
            )
        except KeyboardInterrupt:
            console.print("scoring stopped")
        return

    pending = 0
    for name in sources:
        feed = SilverFeed(settings, get_contract(name))
        if not feed.exists():  # run_scoring says so per source
            continue
        after = -1 if rescore else pending_after(feed)
        pending += int(feed.batches(after)["windows"].sum())
    with Progress(
        TextColumn("[bold]scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("windows", total=pending)

        def advance(report: RoundReport) -> None:
            progress.advance(task, report.windows)
            progress.console.print(describe(report))

        reports = run_scoring(
            settings,
            sources,
            available_now=True,
            actors=actors,
            publish=publish,
            rescore=rescore,
            on_round=advance,
            on_event_round=lambda r: progress.console.print(describe_events(r)),
        )
    scored = sum(r.windows for r in reports)
    console.print(f"scored {scored:,} windows in {len(reports)} round(s); gold is up to date")


# --- evaluate --------------------------------------------------------------------------------
evaluate_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)

_HORIZON_COLUMNS = (
    Column("measure"),
    Column("horizon"),
    Column("n", justify="right"),
    *(
        Column(f"{metric} {method}", justify="right", show=lambda v: f"{v:.3f}")
        for metric in ("MAE", "RMSE")
        for method in ("model", "s-naive", "persist")
    ),
    Column("rel MAE", justify="right", show=lambda v: f"{v:.3f}"),
    Column("rel MAE interval", justify="right", show=lambda v: _interval(*v)),
    Column("rel MAE persist", justify="right", show=lambda v: f"{v:.3f}"),
    Column("coverage 80%", justify="right", show=lambda v: f"{v:.3f}"),
    Column("coverage interval", justify="right", show=lambda v: _interval(*v)),
    Column("outside range", justify="right", show=lambda v: f"{v:.4f}"),
)
_MONTH_COLUMNS = (
    Column("measure"),
    Column("month"),
    Column("n", justify="right"),
    *(
        Column(f"MAE {method}", justify="right", show=lambda v: f"{v:.3f}")
        for method in ("model", "s-naive", "persist")
    ),
    Column("rel MAE", justify="right", show=lambda v: f"{v:.3f}"),
    Column("rel MAE interval", justify="right", show=lambda v: _interval(*v)),
    *(
        Column(f"bias {method}", justify="right", show=lambda v: f"{v:+.3f}")
        for method in ("model", "s-naive", "persist")
    ),
    Column("coverage 80%", justify="right", show=lambda v: f"{v:.3f}"),
    Column("coverage interval", justify="right", show=lambda v: _interval(*v)),
)


def _interval(low: float, high: float) -> str:
    return "-" if math.isnan(low) else f"{low:.3f}-{high:.3f}"


_RETRAIN_COLUMNS = (
    Column("retrain at"),
    Column("challenger", justify="right"),
    Column("series", justify="right"),
    Column("fit s", justify="right", show=lambda v: f"{v:.0f}"),
    Column("challenger rel MAE", justify="right", show=lambda v: f"{v:.4f}"),
    Column("champion rel MAE", justify="right", show=lambda v: f"{v:.4f}"),
    Column("promoted"),
    Column("serving", justify="right"),
)


def print_evaluation(run, *, fmt: str = "table", out_console: Console | None = None) -> None:
    """The tables of an `ml.evaluation.EvaluationRun` (bench/evaluate.py prints the same):
    by horizon bucket and by month per measure, and the retrains. CSV and JSON give the
    summary rows (`ml.evaluation.SUMMARY_COLUMNS`) on stdout."""
    from ml.evaluation import INTERVAL_BLOCK_DAYS, INTERVAL_LEVEL

    show = out_console or console
    summary = run.summary
    if fmt != "table":
        print_rows(
            list(summary.columns),
            summary.itertuples(index=False),
            fmt=fmt,  # type: ignore[arg-type]  # checked by FormatOption
        )
        return
    span = (
        f"{run.source} {run.start:%Y-%m-%d} .. {run.end:%Y-%m-%d}, retrain {run.retrain_every}, "
        f"{run.entities} entities"
    )
    by_horizon = summary[summary["by"] == "horizon"]
    metric_names = [
        f"{m}_{method}"
        for m in ("mae", "rmse")
        for method in ("model", "seasonal_naive", "persistence")
    ]
    print_rows(
        _HORIZON_COLUMNS,
        [
            (
                r["measure"],
                r["group"],
                r["n"],
                *(r[c] for c in metric_names),
                r["relative_mae"],
                (r["relative_mae_low"], r["relative_mae_high"]),
                r["relative_mae_persistence"],
                r["coverage"],
                (r["coverage_low"], r["coverage_high"]),
                r["outside_range"],
            )
            for _, r in by_horizon.iterrows()
        ],
        title=f"Walk-forward by horizon: {span}",
        caption="rel MAE = MAE / seasonal-naive MAE (same hour yesterday); persist = last reading; "
        f"{INTERVAL_LEVEL:.0%} intervals from a bootstrap of {INTERVAL_BLOCK_DAYS}-day blocks of "
        "days of issue",
        console=show,
    )
    by_month = summary[summary["by"] == "month"]
    methods = ("model", "seasonal_naive", "persistence")
    print_rows(
        _MONTH_COLUMNS,
        [
            (
                r["measure"],
                r["group"],
                r["n"],
                *(r[f"mae_{m}"] for m in methods),
                r["relative_mae"],
                (r["relative_mae_low"], r["relative_mae_high"]),
                *(r[f"bias_{m}"] for m in methods),
                r["coverage"],
                (r["coverage_low"], r["coverage_high"]),
            )
            for _, r in by_month.iterrows()
        ],
        title="By month of issue (bias = forecast - actual)",
        console=show,
    )
    print_rows(
        _RETRAIN_COLUMNS,
        [
            (
                f"{r.at:%Y-%m-%d %H:%M}",
                r.challenger,
                r.series,
                r.fit_seconds,
                None if math.isnan(r.challenger_score) else r.challenger_score,
                None if math.isnan(r.champion_score) else r.champion_score,
                "yes" if r.promoted else "no",
                r.champion,
            )
            for r in run.evaluation.retrains
        ],
        title="Retrains (production promotion rule: strictly lower relative MAE on the challenger's test window)",
        null="-",
        console=show,
    )
    show.print(
        f"data: {run.data_from}; {len(run.evaluation.errors):,} forecasts judged; "
        f"{run.seconds / 60:.1f} min",
        highlight=False,
    )


@evaluate_app.callback()
def evaluate(
    source: Annotated[str, source_option("The source to evaluate.")] = "weather",
    date_from: Annotated[
        datetime | None,
        typer.Option(
            "--from", help="First retrain and first forecast (UTC); default: 3 months before --to."
        ),
    ] = None,
    date_to: Annotated[
        datetime | None,
        typer.Option(
            "--to",
            help="End of the span (UTC, exclusive); default: the month after the last month with "
            "data for every forecast target.",
        ),
    ] = None,
    stations: Annotated[
        list[str] | None,
        typer.Option(
            "--stations",
            "--station",
            help="Entity ids (repeatable or comma-separated); default: all with data.",
        ),
    ] = None,
    retrain_every: Annotated[
        str,
        typer.Option(
            help="Retrain interval: monthly (calendar months), weekly, daily, or 7d, 1d, 12h. "
            "One retrain of all 36 weather stations costs ~10 min on 2 busy cores."
        ),
    ] = "monthly",
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes for parallel fits (default: PERISCOPE_TRAIN_WORKERS); unused while the bundle fits in one process.",
        ),
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Walk-forward evaluation as production runs: replay the scheduled retrain over a span.

    At each retrain a challenger is trained on the data known then with the production
    defaults and replaces the champion only by the production promotion rule; the champion
    forecasts from every hourly origin until the next retrain, 1-24 h ahead, on data it never
    saw. Prints MAE, RMSE, relative MAE (model / seasonal naive), bias, 80% interval coverage
    and the share outside the valid range, per measure and horizon bucket and per month, beside
    the seasonal-naive and persistence baselines. Reads silver when the lake holds the span,
    else the source's dataset.
    """
    import pandas as pd

    from ml.evaluation import Retrain, parse_every, run_evaluation

    try:
        parse_every(retrain_every)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--retrain-every'") from None
    entities = [s.strip() for value in stations or [] for s in value.split(",") if s.strip()]
    # Tables go to stdout; with csv/json, progress and notes go to stderr.
    show = console if fmt == "table" else Console(stderr=True)
    with Progress(
        TextColumn(f"[bold]{source}[/] walk-forward"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("retrains"),
        TimeElapsedColumn(),
        console=show,
    ) as progress:
        task = progress.add_task("retrains", total=None)

        def started(data_from: str, times: list) -> None:
            progress.update(task, total=len(times))
            progress.console.print(f"data: {data_from}; {len(times)} retrains", highlight=False)

        def retrained(r: Retrain) -> None:
            verdict = (
                "first champion"
                if r.challenger == 1
                else (
                    f"challenger {r.challenger_score:.4f} vs champion {r.champion_score:.4f}: "
                    + ("promoted" if r.promoted else "kept the champion")
                )
            )
            progress.console.print(
                f"{r.at:%Y-%m-%d %H:%M} retrain {r.challenger}: {r.series} series in "
                f"{r.fit_seconds:.0f} s; {verdict}",
                highlight=False,
            )
            progress.advance(task)

        run = run_evaluation(
            get_settings(),
            source,
            start=None if date_from is None else pd.Timestamp(date_from),
            end=None if date_to is None else pd.Timestamp(date_to),
            retrain_every=retrain_every,
            entities=entities or None,
            workers=workers,
            on_start=started,
            on_retrain=retrained,
        )
    print_evaluation(run, fmt=fmt, out_console=console)
