"""The Dagster definitions: `dagster dev -m periscope.orchestration.definitions` loads `defs`.

Assets: the lake (observed, Delta version = data version), the warehouse load per source, the
dbt models. Jobs and when they run:

| job | what | when |
|---|---|---|
| `warehouse` | observe the lake, `periscope warehouse load`, `dbt build` | `warehouse_cron` (hourly), and the `new_lake_versions` sensor |
| `retrain` | `periscope retrain` (challengers promoted only if better) | `retrain_cron` (daily) |
| `forecast_health` | `periscope models health`; retrain breaching sources (once a day at most) | hourly at :20 |
| `lake_maintenance` | `periscope lake maintain` (compaction, vacuum) | `maintenance_cron` (hourly) |

Freshness: the marts carry a FreshnessPolicy (Dagster's daemon judges their last build); gold,
an observed source asset Dagster never materialises, has a last-update check with its own sensor.
"""

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext, OpExecutionContext, SensorEvaluationContext
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from periscope.contracts import CONTRACTS, SourceContract
from periscope.orchestration.commands import CommandFailed, json_rows, run_periscope
from periscope.orchestration.dbt import (
    dbt_env_vars,
    dbt_key,
    dbt_project,
    dbt_resource,
    prepare_dbt_project,
    with_env,
)
from periscope.orchestration.graph import (
    LOAD_STATE_KEY,
    LakeNode,
    lake_key,
    lake_nodes,
    warehouse_key,
    warehouse_tables,
)
from periscope.orchestration.health import due_for_retrain, read_retrained, write_retrained
from periscope.settings import Settings, get_settings

__all__ = [
    "FORECAST_HEALTH_CRON",
    "GOLD_FRESHNESS",
    "MARTS_FRESHNESS",
    "SENSOR_INTERVAL_S",
    "build_definitions",
    "changed_sources",
    "defs",
    "sources_with_observations",
]

# Hourly, off the hour: the warehouse run of the hour (:05) has usually finished by then.
FORECAST_HEALTH_CRON = "20 * * * *"
# How often the sensor looks for new silver/gold versions. While streams run, every look finds
# some: this bounds how often the warehouse is loaded and dbt builds (minutes of 2 cores).
SENSOR_INTERVAL_S = 15 * 60
# Gold is scored seconds after silver while the pipeline runs; the marts at least hourly.
GOLD_FRESHNESS = timedelta(hours=1)
MARTS_FRESHNESS = timedelta(hours=2)
DBT_GROUPS = ("staging", "intermediate", "marts")


def _asset_key(key: Sequence[str]) -> dg.AssetKey:
    return dg.AssetKey(list(key))


# --- the lake: observed source assets --------------------------------------------------------
def _topic_specs(contracts: Sequence[SourceContract]) -> list[dg.AssetSpec]:
    """The Kafka topics feeding bronze: external assets, there for the lineage."""
    return [
        dg.AssetSpec(
            _asset_key(node.key),
            description=node.description,
            group_name="kafka",
            kinds={"kafka"},
            metadata={"source": node.source},
        )
        for contract in contracts
        for node in lake_nodes(contract)
        if node.table is None
    ]


def _table_nodes(contracts: Sequence[SourceContract]) -> list[LakeNode]:
    return [n for c in contracts for n in lake_nodes(c) if n.table is not None]


def lake_versions(settings: Settings, nodes: Sequence[LakeNode]) -> dict[str, int]:
    """The current Delta version of each lake table that exists, by table path."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    versions = {}
    for node in nodes:
        assert node.table is not None
        try:
            versions[node.table] = DeltaTable(settings.lake_path(node.table)).version()
        except TableNotFoundError:
            continue
    return versions


def observe_lake(settings: Settings, nodes: Sequence[LakeNode]) -> Iterator[dg.ObserveResult]:
    from deltalake import DeltaTable

    for node in nodes:
        assert node.table is not None
        path = settings.lake_path(node.table)
        if not DeltaTable.is_deltatable(path):
            # Observed as absent (no data version) rather than left out: a run's later steps
            # count an asset that yields nothing as skipped, and skip themselves.
            yield dg.ObserveResult(
                asset_key=_asset_key(node.key), metadata={"path": path, "exists": False}
            )
            continue
        table = DeltaTable(path)
        last_commit = table.history(1)[0]
        files = table.get_add_actions(flatten=False).num_rows
        yield dg.ObserveResult(
            asset_key=_asset_key(node.key),
            data_version=dg.DataVersion(str(table.version())),
            metadata={
                "delta_version": table.version(),
                "files": int(files),
                "path": path,
                # What the freshness checks read as the table's last update.
                "dagster/last_updated_timestamp": dg.MetadataValue.timestamp(
                    last_commit["timestamp"] / 1000
                ),
            },
        )


def _lake_asset(settings: Settings, nodes: list[LakeNode]) -> dg.AssetsDefinition:
    specs = [
        dg.AssetSpec(
            _asset_key(n.key),
            deps=[_asset_key(d) for d in n.deps],
            description=f"{n.table}: {n.description}",
            group_name="lake",
            kinds={"delta"},
            metadata={"source": n.source, "path": settings.lake_path(n.table or "")},
        )
        for n in nodes
    ]

    @dg.multi_observable_source_asset(specs=specs, name="lake_tables", can_subset=True)
    def lake_tables(context: AssetExecutionContext) -> Iterator[dg.ObserveResult]:
        """Each lake table's Delta version (its data version), files and last commit time."""
        selected = {tuple(k.path) for k in context.selected_asset_keys}
        yield from observe_lake(settings, [n for n in nodes if n.key in selected])

    return lake_tables


# --- the warehouse load: the loader's tables, by source ---------------------------------------
def _load_metadata(table: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the loader printed about one Postgres table (forecasts: its predictions' row)."""
    row_name = (
        table.removesuffix("_forecasts") + "_predictions" if table.endswith("_forecasts") else table
    )
    row = next((r for r in rows if r.get("table") in (table, row_name)), None)
    if row is None:
        return {}
    copied = row.get("forecasts") if table != row_name else row.get("rows copied")
    return {
        "status": str(row.get("status")),
        "delta_version": row.get("to version"),
        "rows_copied": int(copied or 0),
    }


def _load_asset(contracts: Sequence[SourceContract]) -> dg.AssetsDefinition:
    tables = [t for c in contracts for t in warehouse_tables(c)]
    source_of = {warehouse_key(t.name): t.source for t in tables}
    specs = [
        dg.AssetSpec(
            _asset_key(warehouse_key(t.name)),
            deps=[_asset_key(lake_key(t.delta_table))],
            description=f"lake.{t.name} in Postgres, copied from {t.delta_table} by "
            f"`periscope warehouse load --source {t.source}` (incremental, idempotent).",
            group_name="warehouse",
            kinds={"postgres"},
            metadata={"source": t.source},
            skippable=True,
        )
        for t in tables
    ]
    specs.append(
        dg.AssetSpec(
            _asset_key(LOAD_STATE_KEY),
            description="lake._load_state: the loader's high-water marks, written by every load.",
            group_name="warehouse",
            kinds={"postgres"},
            skippable=True,
        )
    )

    @dg.multi_asset(specs=specs, name="warehouse_load", can_subset=True)
    def warehouse_load(context: AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        """One `periscope warehouse load` of the sources whose tables are selected."""
        selected = [tuple(k.path) for k in context.selected_asset_keys]
        sources = sorted({source_of[k] for k in selected if k in source_of})
        args = ["warehouse", "load", "--format", "json"]
        for source in sources:
            args += ["--source", source]
        # Exit 1 means none of the tables exists yet: nothing to load is not a failure here.
        result = run_periscope(args, log=context.log, ok=(0, 1))
        rows = json_rows(result.stdout)
        for key in selected:
            metadata = _load_metadata(key[-1], rows) if key in source_of else {}
            yield dg.MaterializeResult(asset_key=_asset_key(key), metadata=metadata)

    return warehouse_load


# --- dbt -------------------------------------------------------------------------------------
class PeriscopeDbtTranslator(DagsterDbtTranslator):
    """Keys from `dbt_key` (lake sources are the loader's tables), groups by folder, and a
    freshness policy on the marts."""

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: Any
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        if spec.key.path[0] != "marts":
            return spec
        return spec.replace_attributes(
            freshness_policy=dg.FreshnessPolicy.time_window(fail_window=MARTS_FRESHNESS)
        )

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        return _asset_key(dbt_key(dbt_resource_props))

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        key = dbt_key(dbt_resource_props)
        return f"dbt_{key[0]}" if key[0] in (*DBT_GROUPS, "seeds") else None


def _dbt_assets(settings: Settings) -> dg.AssetsDefinition:
    project = dbt_project(settings)
    if not project.manifest_path.exists():
        prepare_dbt_project(settings, log=dg.get_dagster_logger())

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        dagster_dbt_translator=PeriscopeDbtTranslator(),
        name="dbt_project",
    )
    def dbt_models(context: AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
        """`dbt build` of the selected models: seeds, models, unit and data tests."""
        run_settings = get_settings()
        with with_env(dbt_env_vars(run_settings)):
            invocation = dbt.cli(["build"], context=context)
        yield from invocation.stream()

    return dbt_models


# --- ops run as jobs -------------------------------------------------------------------------
# Ray's start gives its agents 15-30 s to come up; on two busy cores (load 14) they missed it and
# `ray.init` failed ("The current node timed out during startup"). A second try two minutes
# later costs nothing when the first failed there, and a retrain redone is still only promoted
# if better.
RAY_RETRY = dg.RetryPolicy(max_retries=1, delay=120)


def sources_with_observations(settings: Settings, contracts: Sequence[SourceContract]) -> list[str]:
    """The sources whose silver observations table holds data: the ones `retrain` can train.

    Silver creates every source's tables on its first run, so a source that was never fed has
    an empty table (no files), not a missing one.
    """
    from deltalake import DeltaTable

    found = []
    for contract in contracts:
        path = settings.lake_path(contract.table("silver", "observations"))
        if DeltaTable.is_deltatable(path) and DeltaTable(path).get_add_actions().num_rows > 0:
            found.append(contract.name)
    return found


@dg.op(
    description="`periscope retrain --source` for each source with silver observations: a "
    "challenger per source, promoted only if better.",
    retry_policy=RAY_RETRY,
)
def retrain_every_source(context: OpExecutionContext) -> None:
    # One source at a time: `periscope retrain` of every source stops at the first source that
    # has no data (a pipeline run for weather alone, say), and the job failed every day.
    settings = get_settings()
    sources = sources_with_observations(settings, list(CONTRACTS.values()))
    idle = sorted(set(CONTRACTS) - set(sources))
    if idle:
        context.log.info(f"no silver observations, not retrained: {', '.join(idle)}")
    if context.retry_number:
        # A retry: the sources this run retrained before it failed are not trained again.
        started = context.instance.get_run_stats(context.run_id).start_time or 0.0
        done = {s for s, at in read_retrained(settings).items() if at.timestamp() >= started}
        sources = [s for s in sources if s not in done]
    failed = []
    for source in sources:
        try:
            run_periscope(["retrain", "--source", source], log=context.log)
        except CommandFailed as error:
            context.log.error(str(error))
            failed.append(source)
            continue
        write_retrained(settings, {source: datetime.now(UTC)})
    if failed:
        raise dg.Failure(description=f"retrain failed for {', '.join(failed)} (see the log)")


@dg.op(
    description="`periscope models health`: the forecasts' 7-day accuracy from the marts; the "
    "breaching sources are retrained (each at most once a day).",
    retry_policy=RAY_RETRY,
)
def check_forecast_health(context: OpExecutionContext) -> None:
    settings = get_settings()
    metrics = settings.local_dir / "metrics" / "forecast_health.prom"
    # Exit 3: a source is breached (that is what this job looks for), 0: none is.
    result = run_periscope(
        ["models", "health", "--format", "json", "--metrics-file", str(metrics)],
        log=context.log,
        ok=(0, 3),
    )
    breached = sorted(
        {r["source"] for r in json_rows(result.stdout) if r.get("status") not in (None, "ok")}
    )
    retrained = read_retrained(settings)
    chosen = due_for_retrain(breached, retrained, datetime.now(UTC))
    for source in chosen:
        context.log.warning(f"forecast health: retraining {source}")
        run_periscope(["retrain", "--source", source], log=context.log)
        retrained[source] = datetime.now(UTC)
        write_retrained(settings, retrained)


@dg.op(description="`periscope lake maintain`: compact small files, vacuum old ones.")
def maintain_lake(context: OpExecutionContext) -> None:
    # Exit 1: a table failed (the others were still maintained); the rows say which.
    result = run_periscope(["lake", "maintain", "--format", "json"], log=context.log, ok=(0, 1))
    failed = [f"{r['table']}: {r['error']}" for r in json_rows(result.stdout) if r.get("error")]
    if failed or result.returncode:
        raise dg.Failure(description="; ".join(failed) or result.stderr[-2000:])


@dg.job(description="The daily retrain (replaces `periscope scheduler`'s retrain job).")
def retrain() -> None:
    retrain_every_source()


@dg.job(description="The hourly forecast health check.")
def forecast_health() -> None:
    check_forecast_health()


@dg.job(description="Delta maintenance of every lake table.")
def lake_maintenance() -> None:
    maintain_lake()


# --- the sensor ------------------------------------------------------------------------------
def changed_sources(
    before: Mapping[str, int], now: Mapping[str, int], contracts: Sequence[SourceContract]
) -> list[str]:
    """The sources with a table the warehouse loads (silver observations and features, gold)
    whose Delta version moved, or which appeared, since `before`.

    >>> from periscope.contracts import get_contract
    >>> weather = [get_contract("weather")]
    >>> changed_sources({"silver/weather_features": 3}, {"silver/weather_features": 4}, weather)
    ['weather']
    >>> changed_sources({"bronze/weather_raw": 3}, {"bronze/weather_raw": 9}, weather)
    []
    """
    loaded = {t.delta_table: t.source for c in contracts for t in warehouse_tables(c)}
    return sorted({loaded[t] for t, v in now.items() if t in loaded and before.get(t) != v})


def _lake_sensor(
    settings: Settings,
    contracts: Sequence[SourceContract],
    nodes: list[LakeNode],
    dbt_keys: Sequence[dg.AssetKey],
) -> dg.SensorDefinition:
    @dg.sensor(
        name="new_lake_versions",
        job_name="warehouse",
        minimum_interval_seconds=SENSOR_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Loads the sources whose silver or gold tables have new Delta versions, "
        "then builds dbt.",
    )
    def new_lake_versions(context: SensorEvaluationContext) -> dg.SensorResult:
        before = json.loads(context.cursor) if context.cursor else {}
        now = lake_versions(settings, nodes)
        sources = changed_sources(before, now, contracts)
        if not sources:
            return dg.SensorResult(
                skip_reason="no new silver or gold version", cursor=json.dumps(now)
            )
        keys = [_asset_key(n.key) for n in nodes if n.table in now]
        keys += [
            _asset_key(warehouse_key(t.name))
            for c in contracts
            if c.name in sources
            for t in warehouse_tables(c)
        ]
        keys.append(_asset_key(LOAD_STATE_KEY))
        run = dg.RunRequest(
            asset_selection=[*keys, *dbt_keys], tags={"periscope/sources": ",".join(sources)}
        )
        return dg.SensorResult(run_requests=[run], cursor=json.dumps(now))

    return new_lake_versions


# --- all of it -------------------------------------------------------------------------------
def build_definitions(settings: Settings) -> dg.Definitions:
    """Every asset, job, schedule, sensor and check, for the registered contracts."""
    contracts = list(CONTRACTS.values())
    topics, nodes = _topic_specs(contracts), _table_nodes(contracts)
    lake = _lake_asset(settings, nodes)
    load = _load_asset(contracts)
    dbt = _dbt_assets(settings)
    dbt_keys = sorted(dbt.keys, key=lambda k: k.to_user_string())
    warehouse = dg.define_asset_job(
        "warehouse",
        selection=dg.AssetSelection.assets(lake, load, dbt),
        description="Observe the lake, load the warehouse, build dbt.",
    )
    gold_keys = [_asset_key(n.key) for n in nodes if n.key[1] == "gold"]
    with warnings.catch_warnings():
        # Superseded by FreshnessPolicy, which Dagster 1.13 judges by materialisations only:
        # gold is observed (its Delta commit time is the observation's last-update metadata),
        # never materialised, so a policy would stay UNKNOWN. The check and its sensor read it.
        warnings.simplefilter("ignore", dg.SupersessionWarning)
        freshness = dg.build_last_update_freshness_checks(
            assets=gold_keys, lower_bound_delta=GOLD_FRESHNESS
        )
        freshness_sensor = dg.build_sensor_for_freshness_checks(
            freshness_checks=freshness, default_status=dg.DefaultSensorStatus.RUNNING
        )
    running = dg.DefaultScheduleStatus.RUNNING
    schedules = [
        dg.ScheduleDefinition(
            name="warehouse_hourly",
            job=warehouse,
            cron_schedule=settings.warehouse_cron,
            execution_timezone="UTC",
            default_status=running,
        ),
        dg.ScheduleDefinition(
            name="retrain_daily",
            job=retrain,
            cron_schedule=settings.retrain_cron,
            execution_timezone="UTC",
            default_status=running,
        ),
        dg.ScheduleDefinition(
            name="forecast_health_hourly",
            job=forecast_health,
            cron_schedule=FORECAST_HEALTH_CRON,
            execution_timezone="UTC",
            default_status=running,
        ),
        dg.ScheduleDefinition(
            name="lake_maintenance_hourly",
            job=lake_maintenance,
            cron_schedule=settings.maintenance_cron,
            execution_timezone="UTC",
            default_status=running,
        ),
    ]
    sensors = [
        _lake_sensor(settings, contracts, nodes, dbt_keys),
        freshness_sensor,
    ]
    return dg.Definitions(
        assets=[*topics, lake, load, dbt],
        asset_checks=freshness,
        jobs=[warehouse, retrain, forecast_health, lake_maintenance],
        schedules=schedules,
        sensors=sensors,
        resources={"dbt": dbt_resource(settings)},
        # Steps in the run's own process: the work is in subprocesses already, and a process
        # per step would load Dagster and these definitions again for each (seconds of 2 cores).
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Loaded by Dagster's processes (webserver, daemon, each run) on first use."""
    return build_definitions(get_settings())
