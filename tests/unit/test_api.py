"""The API's handlers over a small real Delta lake (FastAPI's TestClient; nothing mocked).

Kafka and Postgres are pointed at ports where nothing listens: the endpoints that need them
must say so (503), the lake endpoints must not care.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from periscope.contracts import AIR_QUALITY, WEATHER
from serving import reads
from serving.api import MAX_ANOMALIES, create_app
from tests.unit.test_api_lake import (
    HORIZONS,
    HOURS,
    MEASURES,
    STATIONS,
    T0,
    gold_rows,
    lake_settings,
    score,
    write_gold_lake,
    yhat,
)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_gold_lake(root)
    return root


@pytest.fixture(scope="module")
def client(lake):
    with TestClient(create_app(lake_settings(lake))) as c:
        yield c


def _iso(hour: int) -> str:
    return (T0 + timedelta(hours=hour)).isoformat()


# --- sources and entities ----------------------------------------------------------------------
def test_sources_lists_every_contract_with_its_gold_entities(client):
    by_name = {s["name"]: s for s in client.get("/sources").json()}
    assert set(by_name) == {"weather", "air_quality", "taxi"}
    assert by_name["weather"]["entities"] == 3
    assert by_name["weather"]["gold_version"] == 1
    assert by_name["weather"]["forecast_targets"] == ["temperature", "humidity", "pressure"]
    assert by_name["taxi"]["key_field"] == "pu_location_id"
    assert by_name["taxi"]["entities"] == 0 and by_name["taxi"]["gold_version"] is None


def test_entities_of_a_source(client):
    found = client.get("/sources/weather/entities").json()
    assert [e["entity_id"] for e in found] == list(STATIONS)
    denver = found[0]
    assert denver["windows"] == HOURS
    assert denver["first_window_start"] == _iso(0)
    assert denver["last_window_start"] == _iso(HOURS - 1)
    assert denver["anomaly_score"] == score("denver", HOURS - 1)


def test_a_source_without_gold_has_no_entities(client):
    assert client.get("/sources/taxi/entities").json() == []


# --- predictions -------------------------------------------------------------------------------
def test_latest_prediction_is_the_newest_window_with_its_forecasts_and_bands(client):
    body = client.get("/predictions/weather/seattle").json()
    last = HOURS - 1
    assert body["source"] == "weather" and body["entity_id"] == "seattle"
    assert body["window_start"] == _iso(last)
    assert body["anomaly_score"] == score("seattle", last)
    assert body["is_anomaly"] is False
    assert (body["forecast_version"], body["anomaly_version"]) == (2, 1)
    assert len(body["forecasts"]) == len(MEASURES) * len(HORIZONS)
    first = body["forecasts"][0]
    expected = yhat("seattle", last, MEASURES[0], HORIZONS[0])
    assert (first["yhat"], first["yhat_lower"], first["yhat_upper"]) == (
        expected,
        expected - 1,
        expected + 1,
    )
    # Columns gold added after the first commit pass through by name.
    assert first["method"] == "seasonal_naive"
    assert "anomaly_kind" in body
    # The test windows are in the past: the age is positive and counts from the window's end.
    assert body["window_age_s"] > body["scored_age_s"] > 0
    assert body["window_age_s"] - body["scored_age_s"] == pytest.approx(60, abs=1)


def test_the_seed_style_alias_is_weather(client):
    assert client.get("/predictions/denver").json() == client.get(
        "/predictions/weather/denver"
    ).json() | {
        "window_age_s": pytest.approx(0, abs=1e9),
        "scored_age_s": pytest.approx(0, abs=1e9),
    }


def test_history_between_start_and_end_oldest_first(client):
    found = client.get(
        "/predictions/weather/denver/history", params={"start": _iso(10), "end": _iso(14)}
    ).json()
    assert [w["window_start"] for w in found] == [_iso(h) for h in range(10, 15)]
    assert [w["anomaly_score"] for w in found] == [score("denver", h) for h in range(10, 15)]
    assert all(w["forecasts"] is None for w in found)


def test_history_keeps_the_newest_windows_within_the_limit(client):
    found = client.get("/predictions/weather/denver/history", params={"limit": 3}).json()
    assert [w["window_start"] for w in found] == [_iso(h) for h in range(HOURS - 3, HOURS)]


def test_history_with_forecasts_reads_them_from_old_and_new_files(client):
    found = client.get(
        "/predictions/weather/portland/history",
        params={"start": _iso(23), "end": _iso(24), "forecasts": "true"},
    ).json()
    assert len(found) == 2
    for window, hour in zip(found, (23, 24), strict=True):
        assert window["forecasts"][0]["yhat"] == yhat("portland", hour, MEASURES[0], 1)
    # The first commit had no `method`: null there, the value after.
    assert found[0]["forecasts"][0].get("method") is None
    assert found[1]["forecasts"][0]["method"] == "seasonal_naive"
    assert found[0]["anomaly_kind"] is None


def test_naive_dates_are_utc(client):
    naive = (T0 + timedelta(hours=5)).replace(tzinfo=None).isoformat()
    found = client.get(
        "/predictions/weather/denver/history", params={"start": naive, "end": naive}
    ).json()
    assert [w["window_start"] for w in found] == [_iso(5)]


# --- anomalies ---------------------------------------------------------------------------------
def _flagged_hours() -> list[int]:
    return [h for h in range(HOURS) if score("denver", h) >= 0.9]


def test_anomalies_newest_first_across_sources(client):
    found = client.get("/anomalies").json()
    expected = [(_iso(h), s) for h in reversed(_flagged_hours()) for s in STATIONS]
    weather = [(a["window_start"], a["entity_id"]) for a in found if a["source"] == "weather"]
    assert weather == expected
    air = [a for a in found if a["source"] == "air_quality"]
    assert [a["window_start"] for a in air] == [_iso(0)]
    assert all(a["is_anomaly"] for a in found)
    starts = [a["window_start"] for a in found]
    assert starts == sorted(starts, reverse=True)


def test_anomalies_since_limit_and_source(client):
    found = client.get(
        "/anomalies", params={"source": "weather", "since": _iso(30), "limit": 4}
    ).json()
    assert [(a["window_start"], a["entity_id"]) for a in found] == [
        (_iso(40), "denver"),
        (_iso(40), "portland"),
        (_iso(40), "seattle"),
        (_iso(30), "denver"),
    ]
    assert found[0]["anomaly_kind"] == "isolation_forest"


def test_anomaly_limit_is_capped(tmp_path):
    path = str(tmp_path / "gold" / "weather_predictions")
    from deltalake import write_deltalake

    many = gold_rows("station_id", STATIONS, range(0, 4000, 10), new_columns=True)
    write_deltalake(path, many)
    with TestClient(create_app(lake_settings(tmp_path))) as c:
        found = c.get("/anomalies", params={"limit": 5000}).json()
    assert len(found) == MAX_ANOMALIES == 1000 < many.num_rows


def test_anomaly_json_is_the_rows_of_anomalies_whatever_its_cache_holds(lake):
    settings = lake_settings(lake)
    snaps = [
        reads.WarmGold(reads.gold_path(settings, c), c, refresh_s=0).refresh()
        for c in (WEATHER, AIR_QUALITY)
    ]
    # Overlapping asks in an order that leaves gaps in the cache between them.
    asks = [(_iso(40), 2), (None, 3), (_iso(10), 100), (None, 100), (_iso(0), 1), (_iso(47), 5)]
    for since, limit in asks:
        moment = None if since is None else datetime.fromisoformat(since)
        expected = orjson.dumps(reads.anomalies(snaps, moment, limit), option=orjson.OPT_NAIVE_UTC)
        assert reads.anomalies_json(snaps, moment, limit) == expected
    assert len(snaps[0].flagged_json) == snaps[0].flagged.num_rows  # all asked for by now


def test_prediction_json_is_latest_prediction_with_its_ages_of_now(lake):
    settings = lake_settings(lake)
    snap = reads.WarmGold(reads.gold_path(settings, WEATHER), WEATHER, refresh_s=0).refresh()
    for now in (T0 + timedelta(days=3), T0 + timedelta(days=4, seconds=0.5)):  # cached: new ages
        for station in STATIONS:
            expected = reads.latest_prediction(snap, station, now)
            found = reads.latest_prediction_json(snap, station, now)
            assert found == orjson.dumps(expected, option=orjson.OPT_NAIVE_UTC)
    assert set(snap.latest_json) == set(STATIONS)
    assert reads.latest_prediction_json(snap, "atlantis", T0) is None


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/sources/flights/entities",
        "/predictions/flights/denver",
        "/predictions/weather/atlantis",
        "/predictions/atlantis",
        "/predictions/weather/atlantis/history",
        "/predictions/taxi/132",
        "/anomalies?source=flights",
        "/accuracy?source=flights",
        "/accuracy?source=weather&measure=wind_speed",
    ],
)
def test_unknown_source_entity_or_measure_is_a_404_with_a_json_error(client, url):
    response = client.get(url)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found" and response.json()["message"]


@pytest.mark.parametrize(
    "url",
    [
        "/anomalies?limit=0",
        "/anomalies?limit=-3",
        "/anomalies?limit=ten",
        "/anomalies?since=yesterday",
        "/anomalies?since=2026-13-01",
        "/predictions/weather/denver/history?start=2026-02-30",
        "/predictions/weather/denver/history?limit=0",
        "/predictions/weather/denver/history?start=2026-11-02&end=2026-11-01",
    ],
)
def test_bad_dates_and_limits_are_a_422(client, url):
    response = client.get(url)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


def test_sql_in_a_parameter_is_only_a_name(client):
    response = client.get("/predictions/weather/denver' or '1'='1")
    assert response.status_code == 404


# --- warehouse, health, metrics ----------------------------------------------------------------
def test_accuracy_without_postgres_is_a_503(client):
    response = client.get("/accuracy", params={"source": "weather", "measure": "temperature"})
    assert response.status_code == 503
    assert response.json()["error"] == "warehouse_unavailable"


def test_health_is_503_when_kafka_and_postgres_are_down_and_shows_the_lake(client):
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["kafka"]["up"] is False and "Connection refused" in body["kafka"]["detail"]
    assert body["postgres"]["up"] is False
    lake = {t["table"]: t for t in body["lake"]}
    assert set(lake) == {"gold.weather_predictions", "gold.air_quality_predictions"}
    assert lake["gold.weather_predictions"]["version"] == 1
    assert lake["gold.weather_predictions"]["age_s"] >= 0
    # No registry here: the models gold names, with the versions scoring, and no champion.
    models = {m["model"]: m for m in body["models"]}
    assert models["weather_forecast"] == {
        "model": "weather_forecast",
        "champion": None,
        "scoring": 2,
    }


def test_metrics_count_requests_by_route_and_status(client):
    def count(route: str, status: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith("periscope_api_requests_total{") and (
                f'route="{route}"' in line and f'status="{status}"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    route = "/predictions/{source}/{entity_id}"
    before_ok, before_missing = count(route, "200"), count(route, "404")
    for _ in range(3):
        client.get("/predictions/weather/denver")
    client.get("/predictions/weather/atlantis")
    assert count(route, "200") == before_ok + 3
    assert count(route, "404") == before_missing + 1
    assert "periscope_api_request_duration_seconds_bucket" in client.get("/metrics").text


def test_metrics_export_consumer_group_lag_without_waiting_on_kafka(client):
    # Kafka is down here: the family is declared, with no sample until Kafka answers (the
    # lag itself is checked against a real broker in tests/integration/test_api_metrics.py).
    text = client.get("/metrics").text
    assert "# TYPE periscope_consumer_group_lag gauge" in text
    assert "\nperiscope_consumer_group_lag{" not in text


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/predictions/{source}/{entity_id}/history" in paths


# --- the warm table ----------------------------------------------------------------------------
def test_warm_gold_rereads_only_when_the_version_moves_and_follows_merges(tmp_path):
    path = str(tmp_path / "gold" / "weather_predictions")
    from deltalake import write_deltalake

    write_deltalake(path, gold_rows("station_id", ("denver",), range(0, 5), new_columns=True))
    warm = reads.WarmGold(path, WEATHER, refresh_s=0)
    first = warm.refresh()
    assert first.version == 0 and first.spans == {"denver": (0, 5)}
    assert warm.refresh() is first  # same version: nothing re-read

    # A MERGE as gold does it: one window re-scored, one new window.
    changed = gold_rows("station_id", ("denver",), range(4, 6), new_columns=True)
    scores = changed.column("anomaly_score").to_pylist()
    changed = changed.set_column(
        changed.schema.get_field_index("anomaly_score"),
        "anomaly_score",
        pa.array([0.5, scores[1]], pa.float64()),
    )
    (
        DeltaTable(path)
        .merge(
            changed,
            "t.station_id = s.station_id AND t.window_start = s.window_start",
            source_alias="s",
            target_alias="t",
        )
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    second = warm.refresh()
    assert second.version == 1
    found = reads.history(
        second, "denver", T0, T0 + timedelta(days=1), limit=100, read_forecasts=None
    )
    naive_t0 = T0.replace(tzinfo=None)  # the warm index keeps naive UTC
    assert [w["window_start"] for w in found] == [naive_t0 + timedelta(hours=h) for h in range(6)]
    assert found[4]["anomaly_score"] == 0.5  # the rewritten row, once
    assert second.latest["denver"]["window_start"] == naive_t0 + timedelta(hours=5)


def test_read_forecasts_picks_rows_across_row_groups(tmp_path):
    import pyarrow.parquet as pq

    rows = gold_rows("station_id", STATIONS, range(0, 10), new_columns=True)
    path = str(tmp_path / "part.parquet")
    pq.write_table(rows, path, row_group_size=7)  # 30 rows in 5 groups
    assert pq.ParquetFile(path).num_row_groups == 5
    wanted = [29, 0, 8, 13, 6, 7]
    expected = rows.column("forecasts").take(wanted).to_pylist()
    assert reads.read_forecasts(path, wanted) == expected
