"""Helpers, not tests: a small real gold lake for the API tests, written with the deltalake library.

Gold's schema is spelled out here as the API reads it (by name): the tests do not import `ml`.
The first commit lacks `anomaly_kind` and forecast `method` (older gold files); later commits
add them, as gold did, so the API must pass new columns through and fill old rows with nulls.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from periscope.settings import Settings

T0 = datetime(2026, 11, 1, tzinfo=UTC)
HOURS = 48  # windows per station
STATIONS = ("denver", "portland", "seattle")
MEASURES = ("temperature", "humidity")
HORIZONS = (1, 2, 3)
TS = pa.timestamp("us", tz="UTC")


def forecast_type(with_method: bool) -> pa.DataType:
    fields = [
        pa.field("measure", pa.string(), nullable=False),
        pa.field("horizon_h", pa.int32(), nullable=False),
        pa.field("target_time", TS, nullable=False),
        pa.field("yhat", pa.float64(), nullable=False),
        pa.field("yhat_lower", pa.float64(), nullable=False),
        pa.field("yhat_upper", pa.float64(), nullable=False),
    ]
    if with_method:
        fields.append(pa.field("method", pa.string(), nullable=False))
    return pa.list_(pa.struct(fields))


def _rank(station: str) -> int:
    return STATIONS.index(station) if station in STATIONS else len(STATIONS)


def score(station: str, hour: int) -> float:
    """A score known to the tests: every 10th hour of each station is an anomaly (>= 0.9)."""
    return 0.95 if hour % 10 == 0 else round(0.1 + 0.001 * hour + 0.01 * _rank(station), 6)


def yhat(station: str, hour: int, measure: str, horizon: int) -> float:
    return 100.0 * _rank(station) + hour + 0.1 * horizon + (0.5 if measure == "humidity" else 0)


def gold_rows(key: str, stations: tuple[str, ...], hours: range, *, new_columns: bool) -> pa.Table:
    rows = []
    for station in stations:
        for h in hours:
            start = T0 + timedelta(hours=h)
            forecasts = []
            for m in MEASURES:
                for hz in HORIZONS:
                    y = yhat(station, h, m, hz)
                    item = {
                        "measure": m,
                        "horizon_h": hz,
                        "target_time": start + timedelta(hours=3 + hz),
                        "yhat": y,
                        "yhat_lower": y - 1.0,
                        "yhat_upper": y + 1.0,
                    }
                    if new_columns:
                        item["method"] = "seasonal_naive" if hz == 1 else "prophet"
                    forecasts.append(item)
            s = score(station, h)
            row = {
                key: station,
                "window_start": start,
                "window_end": start + timedelta(hours=3),
                "anomaly_score": s,
                "is_anomaly": s >= 0.9,
                "forecast_origin": start + timedelta(hours=2),
                "forecasts": forecasts,
                "forecast_model": "weather_forecast",
                "forecast_version": 2,
                "anomaly_model": "weather_anomaly",
                "anomaly_version": 1,
                "scored_at": start + timedelta(hours=3, minutes=1),
            }
            if new_columns:
                row["anomaly_kind"] = "isolation_forest" if s >= 0.9 else None
            rows.append(row)
    fields = [
        pa.field(key, pa.string(), nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("window_end", TS, nullable=False),
        pa.field("anomaly_score", pa.float64()),
        pa.field("is_anomaly", pa.bool_()),
        *([pa.field("anomaly_kind", pa.string())] if new_columns else []),
        pa.field("forecast_origin", TS, nullable=False),
        pa.field("forecasts", forecast_type(new_columns), nullable=False),
        pa.field("forecast_model", pa.string()),
        pa.field("forecast_version", pa.int64()),
        pa.field("anomaly_model", pa.string()),
        pa.field("anomaly_version", pa.int64()),
        pa.field("scored_at", TS, nullable=False),
    ]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def write_gold_lake(root: Path) -> None:
    """weather: 3 stations x 48 hourly windows in two commits (the second adds columns);
    air_quality: one station; taxi: no gold table at all."""
    weather = str(root / "gold" / "weather_predictions")
    write_deltalake(weather, gold_rows("station_id", STATIONS, range(0, 24), new_columns=False))
    write_deltalake(
        weather,
        gold_rows("station_id", STATIONS, range(24, HOURS), new_columns=True),
        mode="append",
        schema_mode="merge",
    )
    air = str(root / "gold" / "air_quality_predictions")
    write_deltalake(
        air, gold_rows("station_id", ("uci_air_quality",), range(0, 5), new_columns=True)
    )


def closed_port() -> int:
    """A local port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lake_settings(root: Path) -> Settings:
    """Settings over the test lake, with Kafka and Postgres on ports where nothing listens."""
    return Settings(
        lake_root=str(root),
        local_dir=root / ".local",
        shared_dir=root,
        kafka_port=closed_port(),
        postgres_port=closed_port(),
        api_refresh_s=0,
    )  # type: ignore[call-arg]
