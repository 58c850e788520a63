"""The live dashboard's pages (a Streamlit script: `periscope dashboard` runs it).

Each page lays out what `serving.dashboard` computes; its panels sit in `st.fragment`s that
re-run every `dashboard_refresh_s` seconds, so a live stream shows without reloading the page.
Every source appears from its contract: no page names a source.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from periscope.contracts import CONTRACTS, SourceContract
from periscope.settings import Settings, get_settings
from serving import dashboard, health, live_feed, marts, reads

NOT_REPORTED = dashboard.NOT_REPORTED


# --- cached resources (one warm gold table per source lives in `reads.shared_gold`) -----------
@st.cache_resource(show_spinner=False)
def _live_feed(_settings: Settings, bootstrap: str) -> live_feed.LiveFeed:
    """One consumer per dashboard server, from the first visit of the Live feed page on."""
    topics = [c.topic("predictions") for c in CONTRACTS.values()]
    return live_feed.LiveFeed(_settings, topics).start()


@st.cache_resource(show_spinner=False)
def _champions(_settings: Settings, mlflow_uri: str) -> health.Champions:
    return health.Champions(_settings)


@st.cache_data(show_spinner=False)
def _locations(source: str, data_dir: str) -> dict[str, tuple[float, float]]:
    from pathlib import Path

    return dashboard.entity_locations(CONTRACTS[source], Path(data_dir))


# A series panel re-runs every few seconds: its reads of gold's files (forecasts) and of silver
# are kept until gold's version moves (history) or for a refresh or two (observations).
@st.cache_data(show_spinner=False, max_entries=64)
def _history(
    _snapshot: reads.GoldSnapshot,
    lake_root: str,
    source: str,
    version: int | None,
    entity_id: str,
    hours: int,
) -> list[dict[str, Any]]:
    return dashboard.read_history(_snapshot, entity_id, hours=hours)


@st.cache_data(show_spinner=False, max_entries=64, ttl=10)
def _observed(
    _settings: Settings,
    lake_root: str,
    source: str,
    entity_id: str,
    measure: str,
    start: datetime,
    end: datetime,
) -> pd.DataFrame:
    contract = CONTRACTS[source]
    target = next(t for t in contract.forecast_targets if t.name == measure)
    return dashboard.observed_series(_settings, contract, entity_id, target, start, end)


def gold(settings: Settings, contract: SourceContract) -> reads.GoldSnapshot:
    # one per server, as the API keeps them; `periscope dashboard` reads them as it starts
    path = reads.gold_path(settings, contract)
    return reads.shared_gold(path, contract, refresh_s=settings.dashboard_refresh_s).snapshot()


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing figures read "not reported", never a blank or NaN; floats at most 2 decimals."""

    def cell(value: Any) -> Any:
        if isinstance(value, float):
            return f"{value:.2f}".rstrip("0").rstrip(".")
        return value

    return frame.astype(object).where(frame.notna(), NOT_REPORTED).map(cell)


def live(settings: Settings, panel: Callable[[], None]) -> None:
    """Run a panel as a fragment that re-runs on its own every `dashboard_refresh_s`."""
    st.fragment(run_every=timedelta(seconds=settings.dashboard_refresh_s))(panel)()


# --- pages -------------------------------------------------------------------------------------
def entities_page(settings: Settings) -> None:
    st.header("Entities")
    st.caption("Each source's entities coloured by their latest anomaly score (green 0, red 1).")
    contracts = list(CONTRACTS.values())

    def panel() -> None:
        for tab, contract in zip(st.tabs([c.name for c in contracts]), contracts, strict=True):
            with tab:
                _entities_of(settings, contract)

    live(settings, panel)


def _entities_of(settings: Settings, contract: SourceContract) -> None:
    snap = gold(settings, contract)
    frame = dashboard.entity_frame(snap, _locations(contract.name, str(settings.data_dir)))
    label = contract.entity_label
    if frame.empty:
        st.info(f"No {label} of {contract.name} has a gold window yet.")
        return
    flagged = int(frame["is_anomaly"].fillna(False).sum())
    a, b, c = st.columns(3)
    a.metric(f"{label}s", len(frame))
    b.metric("anomalous now", flagged)
    c.metric("gold version", snap.version if snap.version is not None else NOT_REPORTED)
    located = frame.dropna(subset=["latitude", "longitude"])
    # The grid first (left): it is the first paint; the map's deck.gl code loads after it.
    grid_column, map_column = st.columns(2) if not located.empty else (st.container(), None)
    with grid_column:
        _grid(frame, contract)
    if map_column is not None:
        with map_column:
            _map(located)


def _grid(frame: pd.DataFrame, contract: SourceContract) -> None:
    grid = frame[["entity_id", "anomaly_score", "is_anomaly", "windows", "last_window_start"]]
    grid = grid.rename(columns={"entity_id": contract.key_field})
    if len(grid) <= dashboard.MAX_STYLED_ROWS:
        st.table(_coloured(grid, frame["colour"]))
        return
    # `frame` is sorted most anomalous first. The grid of all is drawn only when asked for: on
    # the page (even in a closed expander) it held the table back until the browser had loaded
    # the grid's ~1.5 MB of code.
    st.caption(f"The {dashboard.TOP_ROWS} most anomalous of {len(grid)} {contract.entity_label}s")
    # Plain HTML, not st.table: a new visitor's browser then paints it without first fetching
    # Streamlit's Arrow table code (~1 MB; 0.3 s of a 2-core machine's first paint)
    # (names escaped: the Styler writes cells into the HTML as they are)
    top = grid.head(dashboard.TOP_ROWS).map(lambda v: html.escape(v) if isinstance(v, str) else v)
    styled = _coloured(top, frame["colour"].head(dashboard.TOP_ROWS))
    st.html(styled.hide(axis="index").set_table_styles(_HTML_TABLE).to_html())
    if st.toggle(f"Show every {contract.entity_label} ({len(grid)})", key=f"all-{contract.name}"):
        st.dataframe(grid, hide_index=True)


# Close to st.table's look: thin rules, left-aligned headings
_HTML_TABLE = [
    {"selector": "", "props": "border-collapse: collapse; font-size: 0.875rem;"},
    {"selector": "th", "props": "text-align: left; padding: 0.3rem 0.75rem;"
     " border-bottom: 1px solid rgba(49, 51, 63, 0.2); font-weight: 600;"},
    {"selector": "td", "props": "padding: 0.3rem 0.75rem;"
     " border-bottom: 1px solid rgba(49, 51, 63, 0.1);"},
]  # fmt: skip


def _coloured(grid: pd.DataFrame, colours: pd.Series) -> Any:
    """The grid with each anomaly score's cell in its colour."""
    return grid.style.apply(
        lambda column: (
            [f"background-color: {c}" for c in colours]
            if column.name == "anomaly_score"
            else [""] * len(column)
        ),
        axis=0,
    ).format({"anomaly_score": "{:.3f}"}, na_rep=NOT_REPORTED)


def _map(located: pd.DataFrame) -> None:
    """Entities as coloured dots with their names: no base map (tiles need the internet)."""
    import pydeck as pdk
    from pydeck.data_utils import compute_view

    points = located[["entity_id", "anomaly_score", "longitude", "latitude"]].copy()
    points["rgb"] = [[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in located["colour"]]
    position = ["longitude", "latitude"]
    layers = [
        pdk.Layer("ScatterplotLayer", points, get_position=position, get_fill_color="rgb",
                  get_radius=50_000, radius_min_pixels=7, pickable=True),
        pdk.Layer("TextLayer", points, get_position=position, get_text="entity_id", get_size=13,
                  get_pixel_offset=[0, -16], get_color=[60, 60, 60]),
    ]  # fmt: skip
    view = compute_view(points[position].to_numpy().tolist())
    view.zoom = max(view.zoom - 1, 0)  # a margin: the outermost entities stay in the frame
    tooltip = {"text": "{entity_id}: anomaly score {anomaly_score}"}
    st.pydeck_chart(
        pdk.Deck(layers=layers, initial_view_state=view, map_style=None, tooltip=tooltip)
    )


def series_page(settings: Settings) -> None:
    st.header("Series")
    st.caption(
        "Observed hourly values (silver) with the forecast made h hours ahead and its 80% band; "
        "red rules mark windows the anomaly model flagged; dashed: the newest window's forecast."
    )
    forecasting = [c for c in CONTRACTS.values() if c.forecast_targets]
    left, middle, right = st.columns(3)
    contract = CONTRACTS[left.selectbox("source", [c.name for c in forecasting])]
    snap = gold(settings, contract)
    entity_ids = sorted(snap.latest)
    if not entity_ids:
        st.info(f"No {contract.entity_label} of {contract.name} has a gold window yet.")
        return
    entity_id = middle.selectbox(contract.entity_label, entity_ids)
    measure = right.selectbox("measure", list(contract.forecast_names))
    horizons = sorted(
        {
            f["horizon_h"]
            for f in snap.latest[entity_id].get(reads.FORECASTS) or ()
            if f["measure"] == measure
        }  # fmt: skip
    ) or [1]
    a, b = st.columns(2)
    horizon = a.selectbox("forecast made h hours ahead", horizons)
    hours = b.slider("hours of windows", 12, 24 * 14, 72, step=12)

    def panel() -> None:
        snapshot = gold(settings, contract)
        windows = _history(
            snapshot, settings.lake_root, snapshot.source, snapshot.version, entity_id, hours
        )
        band = dashboard.forecast_band(windows, measure, horizon)
        latest = windows[-1:] if windows else []
        path = pd.concat(
            [dashboard.forecast_band(latest, measure, h) for h in horizons], ignore_index=True
        )
        starts = [w["window_start"] for w in windows]
        ends = [t for t in (*band["target_time"], *path["target_time"])]
        if not starts:
            st.info(f"{entity_id} has no windows in the last {hours} hours of its history.")
            return
        begin, finish = min(starts), max([*ends, *starts]) + timedelta(hours=1)
        observed = _observed(
            settings, settings.lake_root, contract.name, entity_id, measure,
            begin.replace(tzinfo=UTC), finish.replace(tzinfo=UTC),
        )  # fmt: skip
        flagged = pd.DataFrame(
            {"window_end": [w["window_end"] for w in windows if w.get("is_anomaly")]}
        )
        st.altair_chart(_series_chart(observed, band, path, flagged, measure), width="stretch")
        x, y, z = st.columns(3)
        x.metric("windows", len(windows))
        y.metric("flagged", len(flagged))
        z.metric("observed hours", len(observed))

    live(settings, panel)


def _series_chart(
    observed: pd.DataFrame,
    band: pd.DataFrame,
    path: pd.DataFrame,
    flagged: pd.DataFrame,
    measure: str,
) -> alt.LayerChart | alt.FacetChart:
    time = alt.X("time:T", title="time (UTC)")
    layers: list[Any] = [
        alt.Chart(band.rename(columns={"target_time": "time"}))
        .mark_area(opacity=0.25, color="#4c78a8")
        .encode(time, alt.Y("yhat_lower:Q", title=measure), alt.Y2("yhat_upper:Q")),
        alt.Chart(band.rename(columns={"target_time": "time"}))
        .mark_line(color="#4c78a8")
        .encode(time, alt.Y("yhat:Q")),
        alt.Chart(path.rename(columns={"target_time": "time"}))
        .mark_line(color="#4c78a8", strokeDash=[4, 3])
        .encode(time, alt.Y("yhat:Q")),
        alt.Chart(observed.rename(columns={"hour": "time"}))
        .mark_line(point=alt.OverlayMarkDef(color="#333333"), color="#333333")
        .encode(time, alt.Y("value:Q")),
    ]
    if not flagged.empty:
        layers.append(
            alt.Chart(flagged.rename(columns={"window_end": "time"}))
            .mark_rule(color="#d73027", strokeWidth=2)
            .encode(time)
        )
    return alt.layer(*layers)


def anomalies_page(settings: Settings) -> None:
    st.header("Anomaly feed")
    st.caption("Windows the anomaly models flagged, newest first, every source.")
    limit = st.slider("show at most", 10, 1000, 200, step=10)

    def panel() -> None:
        snaps = [gold(settings, c) for c in CONTRACTS.values()]
        feed = dashboard.anomaly_feed(snaps, limit=limit)
        if feed.empty:
            st.info("No window has been flagged yet.")
            return
        counts = feed.groupby("source").size()
        for column, (source, n) in zip(st.columns(len(counts)), counts.items(), strict=True):
            column.metric(f"{source} flagged (shown)", int(n))
        st.dataframe(feed, hide_index=True)  # numbers stay numbers: sortable in the grid

    live(settings, panel)


def live_feed_page(settings: Settings) -> None:
    st.header("Live feed")
    feed = _live_feed(settings, settings.kafka_bootstrap_servers)
    st.caption(
        f"The newest messages on every source's predictions topic, as gold publishes them, read "
        f"by the `{feed.group}` consumer group (its lag: the API's /metrics, `periscope monitor`)."
    )
    limit = st.slider("show at most", 10, 500, 100, step=10, key="feed_limit")

    def panel() -> None:
        rows = live_feed.feed_rows(feed.newest(limit), CONTRACTS.values())
        if not rows:
            st.info(f"No prediction has arrived since the feed started ({feed.status}).")
            return
        st.dataframe(pd.DataFrame(rows), hide_index=True)

    live(settings, panel)


def models_page(settings: Settings) -> None:
    st.header("Models")

    def panel() -> None:
        snaps = [gold(settings, c) for c in CONTRACTS.values()]
        names = sorted(
            {
                row[f"{kind}_model"]
                for s in snaps
                for row in s.latest.values()
                for kind in ("forecast", "anomaly")
                if row.get(f"{kind}_model")
            }  # fmt: skip
        )
        champions = _champions(settings, settings.mlflow_uri).get(names)
        st.subheader("Versions scoring the newest windows")
        versions = dashboard.model_versions(snaps, champions)
        if versions.empty:
            st.info("Gold has no scored window yet.")
        else:
            st.table(shown(versions))
        st.subheader("Forecast accuracy by horizon (marts.fct_forecast_accuracy)")
        try:
            accuracy = pd.DataFrame(marts.accuracy(settings, source=None, measure=None))
        except marts.WarehouseUnavailable as exc:
            st.info(f"Accuracy {NOT_REPORTED}: the marts cannot be read ({exc}).")
            return
        if accuracy.empty:
            st.info("No forecast has been judged yet (the marts hold no accuracy rows).")
            return
        accuracy["series"] = accuracy["source"] + "." + accuracy["measure"]
        st.altair_chart(
            alt.Chart(accuracy)
            .mark_line(point=True)
            .encode(
                alt.X("horizon_h:Q", title="horizon (h)"),
                alt.Y("mae:Q", title="MAE"),
                alt.Color("series:N"),
                tooltip=["series", "horizon_h", "mae", "rmse", "bias", "coverage_80", "forecasts"],
            ),
            width="stretch",
        )
        st.dataframe(shown(accuracy.drop(columns="series")), hide_index=True)

    live(settings, panel)


def health_page(settings: Settings) -> None:
    st.header("System health")
    st.caption(
        "From the lake's own records (each table's commit history, silver's batches and "
        f"quarantine, gold's scored_at) and the stages' Prometheus endpoints: '{NOT_REPORTED}' "
        "where no stage reports a figure yet."
    )

    def panel() -> None:
        now = datetime.now(UTC)
        where = (
            f"{settings.kafka_bootstrap_servers} {settings.postgres_host}:{settings.postgres_port}"
        )
        kafka, postgres = _dependencies(settings, where)
        a, b = st.columns(2)
        a.metric("Kafka", "up" if kafka["up"] else "down", kafka["detail"], delta_color="off")
        b.metric("Postgres", "up" if postgres["up"] else "down", postgres["detail"],
                 delta_color="off")  # fmt: skip

        st.subheader("Records/s per stage (last 5 minutes of commits)")
        stages = []
        for c in CONTRACTS.values():
            for layer, entity in dashboard.STAGE_TABLES:
                commits = dashboard.commit_history(settings.lake_path(c.table(layer, entity)))
                if commits:
                    figures = dashboard.stage_throughput(commits, now)
                    stages.append({"source": c.name, "stage": layer, **figures})
        if stages:
            st.table(shown(pd.DataFrame(stages)))
        else:
            st.info("No stage has committed to the lake yet.")

        st.subheader("How far each stream is behind")
        behind = []
        for c in CONTRACTS.values():
            progress = dashboard.silver_progress(
                settings.lake_path(c.table("silver", "batches")), now
            )
            if progress is not None:
                behind.append({"source": c.name, **progress})
        if behind:
            st.table(shown(pd.DataFrame(behind)))
        st.caption("What the stages' Prometheus endpoints report (see the README's Metrics)")
        st.table(shown(dashboard.stage_metrics(settings)))

        st.subheader("Window end -> gold latency (newest 500 windows)")
        latency = [
            {"source": c.name, **dashboard.latency_percentiles(gold(settings, c))}
            for c in CONTRACTS.values()
        ]
        st.table(shown(pd.DataFrame(latency)))

        st.subheader("Quarantine by reason")
        quarantine = [
            {"source": c.name, "reason": reason, "records": n}
            for c in CONTRACTS.values()
            for reason, n in dashboard.quarantine_by_reason(
                settings.lake_path(c.table("silver", "quarantine"))
            ).items()
        ]
        if quarantine:
            st.table(pd.DataFrame(quarantine))
        else:
            st.info("Nothing quarantined.")

    live(settings, panel)


@st.cache_data(ttl=10, show_spinner=False)
def _dependencies(_settings: Settings, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Kafka and Postgres up or not, asked at most every 10 s (`where` keys the cache)."""
    return health.kafka_status(_settings, 1.0), health.postgres_status(_settings, 1)


PAGES: dict[str, Callable[[Settings], None]] = {
    "Entities": entities_page,
    "Series": series_page,
    "Anomalies": anomalies_page,
    "Live feed": live_feed_page,
    "Models": models_page,
    "System health": health_page,
}


def main() -> None:
    st.set_page_config(page_title="Periscope", page_icon=":telescope:", layout="wide")
    settings = get_settings()
    st.sidebar.title("Periscope")
    page = st.sidebar.radio("page", list(PAGES))
    st.sidebar.caption(
        f"lake: {settings.lake_root}  \nrefresh: every {settings.dashboard_refresh_s:g} s"
    )
    PAGES[page](settings)


main()
