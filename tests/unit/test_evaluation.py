"""Walk-forward evaluation (ml/evaluation.py): no look-ahead, the promotion rule at each
retrain, and the bucket and relative-MAE arithmetic on hand-made forecasts."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import polars as pl
import pytest
from rich.console import Console

from ml.cli import print_evaluation
from ml.evaluation import (
    INTERVAL_BLOCK_DAYS,
    Evaluation,
    EvaluationRun,
    ProductionForecaster,
    block_interval,
    default_span,
    horizon_bucket,
    hourly_from_records,
    parse_every,
    summarize,
    walk_forward,
)
from ml.training import TrainConfig
from periscope.contracts import WEATHER

START = pd.Timestamp("2020-01-01")


def _hourly(days: int, seed: int = 0, station: str = "denver") -> pd.DataFrame:
    """One station's hourly temperature: a daily cycle plus noise (the other targets empty)."""
    ds = pd.date_range(START, periods=days * 24, freq="h")
    rng = np.random.default_rng(seed)
    hour = np.arange(len(ds))
    temperature = 10 + 6 * np.sin(2 * np.pi * hour / 24) + rng.normal(0, 0.7, len(ds))
    return pd.DataFrame(
        {
            "station_id": station,
            "ds": ds,
            "temperature": temperature,
            "humidity": np.nan,
            "pressure": np.nan,
            "wind_speed": np.nan,
            "wind_direction": np.nan,
        }
    )


# --- a forecaster of the adapter's shape whose models and comparisons the test chooses --------


@dataclass
class _Constant:
    """Model number k forecasts k at every horizon, with the band k - 1 .. k + 1."""

    number: int

    def series(self) -> list[tuple[str, str]]:
        return [("denver", "temperature")]

    def forecast(self, entity_id, measure, origins, grid_start, observed, context=None):
        yhat = np.full((len(origins), 24), float(self.number))
        return yhat, yhat - 1, yhat + 1


class _Scripted:
    """Fits model 1, 2, 3, ...; the promotion comparison returns the scores it is given."""

    horizon_hours = 24

    def __init__(self, scores: dict[int, tuple[float, float]]) -> None:
        self.scores = scores
        self.fitted_on: list[pd.Timestamp] = []

    def fit(self, known, cutoff):
        self.fitted_on.append(known["ds"].max())
        return _Constant(len(self.fitted_on))

    def compare(self, challenger, champion, known):
        return self.scores[challenger.number]


def test_the_promotion_rule_decides_at_each_retrain_which_model_serves():
    hourly = _hourly(20)
    # Retrain 2 is better (promoted), 3 worse (kept), 4 ties (kept: ties keep the champion).
    forecaster = _Scripted({2: (0.8, 0.9), 3: (0.95, 0.8), 4: (0.8, 0.8)})
    evaluation = walk_forward(
        hourly,
        WEATHER,
        forecaster,
        start=START + pd.Timedelta(days=10),
        end=START + pd.Timedelta(days=14),
        retrain_every=parse_every("1d"),
    )
    decisions = [(r.challenger, r.promoted, r.champion) for r in evaluation.retrains]
    assert decisions == [(1, True, 1), (2, True, 2), (3, False, 2), (4, False, 2)]
    # Each retrain saw only the hours before it.
    assert forecaster.fitted_on == [
        START + pd.Timedelta(days=d) - pd.Timedelta(hours=1) for d in (10, 11, 12, 13)
    ]
    errors = evaluation.errors
    issued = errors["origin"] + pd.Timedelta(hours=1)
    day = (issued - START).dt.days
    # The forecasts issued on a day come from the model serving that day, and only from it.
    assert (errors["model"] == errors["champion"]).all()
    assert errors.groupby(day)["champion"].unique().map(list).to_dict() == {
        10: [1],
        11: [2],
        12: [2],
        13: [2],
    }
    # Every hourly origin of the span, each 1..24 h ahead (the actuals run on past the end).
    assert errors["origin"].nunique() == 4 * 24
    assert errors.groupby("origin")["horizon_h"].count().eq(24).all()


def test_baselines_are_the_same_hour_yesterday_and_the_last_reading():
    hourly = _hourly(12)
    hourly.loc[hourly["ds"] == START + pd.Timedelta(days=10, hours=-1), "temperature"] = np.nan
    evaluation = walk_forward(
        hourly,
        WEATHER,
        _Scripted({}),
        start=START + pd.Timedelta(days=10),
        end=START + pd.Timedelta(days=10, hours=1),
        retrain_every=parse_every("daily"),
    )
    y = hourly.set_index("ds")["temperature"]
    origin = START + pd.Timedelta(days=10, hours=-1)  # the one origin; its own hour is missing
    rows = evaluation.errors.set_index("horizon_h")
    assert (rows["origin"] == origin).all() and list(rows.index) == list(range(1, 25))
    # 24 h ahead, the same hour yesterday is the origin's own, missing hour: no forecast.
    assert np.isnan(rows.at[24, "seasonal_naive"])
    for h in (1, 5, 23):
        target = origin + pd.Timedelta(hours=h)
        assert rows.at[h, "actual"] == pytest.approx(y[target], abs=1e-5)
        assert rows.at[h, "seasonal_naive"] == pytest.approx(
            y[target - pd.Timedelta(hours=24)], abs=1e-5
        )
        # The origin's hour is missing: persistence carries the hour before it.
        assert rows.at[h, "persistence"] == pytest.approx(
            y[origin - pd.Timedelta(hours=1)], abs=1e-5
        )


def test_buckets_and_relative_mae_on_a_hand_made_case():
    origin = pd.Timestamp("2017-03-31 23:00")  # issued 2017-04-01 00:00: April
    rows = []
    # horizon, actual, model, seasonal naive, persistence, lower, upper
    for h, actual, model, naive, persistence, lower, upper in [
        (1, 10.0, 11.0, 14.0, 10.0, 9.0, 12.0),  # model |1|, naive |4|, inside
        (6, 10.0, 8.0, 12.0, 13.0, 8.5, 9.0),  # model |2|, naive |2|, outside
        (7, 20.0, 23.0, 26.0, 21.0, 19.0, 24.0),  # 7-12 h: model |3|, naive |6|
        (24, 0.0, -95.0, 5.0, 1.0, -99.0, 1.0),  # 13-24 h: below -90 °C, inside
    ]:
        rows.append(("denver", "temperature", origin, h, actual, model, lower, upper))
        rows[-1] += (naive, persistence, 1)
    errors = pd.DataFrame(
        rows,
        columns=[
            "entity_id",
            "measure",
            "origin",
            "horizon_h",
            "actual",
            "model",
            "lower",
            "upper",
            "seasonal_naive",
            "persistence",
            "champion",
        ],
    )
    summary = summarize(errors, WEATHER).set_index(["by", "group"])
    early = summary.loc[("horizon", "1-6 h")]
    assert early["n"] == 2
    assert early["mae_model"] == pytest.approx(1.5)
    assert early["mae_seasonal_naive"] == pytest.approx(3.0)
    assert early["relative_mae"] == pytest.approx(0.5)
    assert early["rmse_model"] == pytest.approx(math.sqrt((1 + 4) / 2))
    assert early["bias_model"] == pytest.approx((1 - 2) / 2)
    assert early["mae_persistence"] == pytest.approx(1.5)
    assert early["relative_mae_persistence"] == pytest.approx(0.5)
    assert early["coverage"] == pytest.approx(0.5)
    assert summary.loc[("horizon", "7-12 h"), "relative_mae"] == pytest.approx(0.5)
    late = summary.loc[("horizon", "13-24 h")]
    assert late["relative_mae"] == pytest.approx(95 / 5)
    assert late["outside_range"] == 1.0
    everything = summary.loc[("horizon", "all")]
    # Pooled over rows, not a mean of the buckets' ratios.
    assert everything["relative_mae"] == pytest.approx((1 + 2 + 3 + 95) / (4 + 2 + 6 + 5))
    assert everything["outside_range"] == pytest.approx(0.25)
    assert summary.loc[("month", "2017-04"), "n"] == 4
    assert list(horizon_bucket(np.array([1, 6, 7, 12, 13, 24]))) == [
        "1-6 h",
        "1-6 h",
        "7-12 h",
        "7-12 h",
        "13-24 h",
        "13-24 h",
    ]


def test_a_row_missing_a_baseline_is_left_out_of_every_figure():
    errors = pd.DataFrame(
        {
            "entity_id": "denver",
            "measure": "temperature",
            "origin": pd.Timestamp("2017-04-01"),
            "horizon_h": [1, 2],
            "actual": [0.0, 0.0],
            "model": [1.0, 100.0],
            "lower": [-1.0, -1.0],
            "upper": [1.0, 1.0],
            "seasonal_naive": [2.0, np.nan],
            "persistence": [1.0, 1.0],
            "champion": 1,
        }
    )
    row = summarize(errors, WEATHER).set_index(["by", "group"]).loc[("horizon", "1-6 h")]
    assert (row["n"], row["mae_model"], row["relative_mae"]) == (1, 1.0, 0.5)


def test_block_interval_resamples_blocks_not_rows():
    rng = np.random.default_rng(3)
    days = 20
    ratio = rng.uniform(0.6, 1.0, days)  # each day's model / naive error
    copies = 50  # a day's forecasts: alike (one weather), many rows
    block = np.repeat(np.arange(days), copies)
    model, naive = np.repeat(ratio, copies), np.ones(days * copies)
    by_block = block_interval(model, naive, block)
    # Only the blocks' sums count: one row a day gives the same interval.
    assert by_block == pytest.approx(block_interval(ratio, np.ones(days), np.arange(days)))
    low, high = by_block
    assert low < model.sum() / naive.sum() < high
    assert ratio.min() <= low and high <= ratio.max()
    # Each row its own block would claim a thousand independent days.
    row_low, row_high = block_interval(model, naive, np.arange(days * copies))
    assert high - low > 3 * (row_high - row_low)
    # The same data and seed give the same interval; every block alike, no width at all.
    assert block_interval(model, naive, block) == by_block
    assert block_interval(np.full(6, 2.0), np.full(6, 4.0), np.arange(6)) == (0.5, 0.5)
    assert all(np.isnan(block_interval(np.ones(2), np.zeros(2), np.arange(2))))


def test_summary_intervals_resample_blocks_of_days_of_issue():
    """Six days of issue, the model twice as good as seasonal naive in the first three and
    half as good in the last three: with 3-day blocks the interval reaches both halves' ratios
    (0.5 and 1.5: a draw of the same block twice is 25 % likely); with 1-day blocks six
    draws would all land in one half only 3 % of the time."""
    assert INTERVAL_BLOCK_DAYS == 3
    origins = pd.date_range("2017-03-31 23:00", periods=6 * 24, freq="h")  # issued April 1-6
    late = origins >= pd.Timestamp("2017-04-03 23:00")
    errors = pd.DataFrame(
        {
            "entity_id": "denver",
            "measure": "temperature",
            "origin": origins,
            "horizon_h": 1,
            "actual": 0.0,
            "model": np.where(late, 3.0, 1.0),
            "lower": np.where(late, 1.0, -1.0),  # covered in the first half only
            "upper": 4.0,
            "seasonal_naive": 2.0,
            "persistence": 2.0,
            "champion": 1,
        }
    )
    summary = summarize(errors, WEATHER)
    row = summary.set_index(["by", "group"]).loc[("horizon", "1-6 h")]
    assert row["relative_mae"] == pytest.approx(1.0)
    assert (row["relative_mae_low"], row["relative_mae_high"]) == pytest.approx((0.5, 1.5))
    assert row["coverage"] == pytest.approx(0.5)
    assert (row["coverage_low"], row["coverage_high"]) == pytest.approx((0.0, 1.0))

    # `periscope evaluate` shows them beside the figures.
    run = EvaluationRun(
        source="weather",
        start=pd.Timestamp("2017-04-01"),
        end=pd.Timestamp("2017-04-07"),
        retrain_every="monthly",
        data_from="a test frame",
        entities=1,
        evaluation=Evaluation(errors=errors, retrains=[]),
        summary=summary,
        seconds=1.0,
    )
    shown = io.StringIO()
    print_evaluation(run, out_console=Console(file=shown))
    text = shown.getvalue()
    assert "rel MAE interval" in text and "0.500-1.500" in text and "0.000-1.000" in text


# --- no look-ahead, with the production forecaster ------------------------------------------

# Production's model settings; a short split so a test trains in seconds: training on the
# days up to two before a retrain (validation one day, test one day).
_SMALL = TrainConfig(test_days=1, validation_days=1, max_train_days=8)


class _Recording(ProductionForecaster):
    """The production forecaster, keeping each fitted model to compare across runs."""

    def __init__(self) -> None:
        super().__init__(WEATHER, _SMALL)
        self.models: list = []

    def fit(self, known, cutoff):
        model = super().fit(known, cutoff)
        self.models.append(model)
        return model


def _walk(hourly: pd.DataFrame) -> tuple[pd.DataFrame, _Recording]:
    forecaster = _Recording()
    evaluation = walk_forward(
        hourly,
        WEATHER,
        forecaster,
        start=START + pd.Timedelta(days=13),
        end=START + pd.Timedelta(days=17),
        retrain_every=parse_every("3d"),  # retrains at days 13 and 16
    )
    return evaluation.errors, forecaster


def _same_inputs(model) -> np.ndarray:
    """A model's forecasts from fixed origins and observations (what it learnt, not what it saw)."""
    origins = np.arange(24) + int(pd.Timestamp("2020-01-20").value // 3_600_000_000_000)
    observed = 10 + 6 * np.sin(2 * np.pi * np.arange(24 + 47) / 24)
    return np.stack(
        model.forecast("denver", "temperature", origins, int(origins[0]) - 47, observed)
    )


def test_no_forecast_and_no_model_sees_data_after_its_time():
    hourly = _hourly(18)
    before, first = _walk(hourly)
    # Change every reading from 06:00 on the first day of the span.
    changed_from = START + pd.Timedelta(days=13, hours=6)
    changed = hourly.copy()
    changed.loc[changed["ds"] >= changed_from, "temperature"] += 8.0
    after, second = _walk(changed)

    # The first retrain (at the start of the span) saw nothing that changed: the same model.
    assert first.models[0].series() == second.models[0].series() == [("denver", "temperature")]
    np.testing.assert_array_equal(_same_inputs(first.models[0]), _same_inputs(second.models[0]))
    # The second retrain trained on the change, so its model differs: the test can tell.
    assert not np.allclose(_same_inputs(first.models[1]), _same_inputs(second.models[1]))

    # Forecasts from origins before the change are the same, whatever their targets.
    key = ["origin", "horizon_h"]
    columns = ["model", "lower", "upper", "seasonal_naive", "persistence"]
    a = before.set_index(key).sort_index()
    b = after.set_index(key).sort_index()
    seen_before = a.index.get_level_values("origin") < changed_from
    pd.testing.assert_frame_equal(a.loc[seen_before, columns], b.loc[seen_before, columns])
    assert (a.loc[seen_before, "actual"] != b.loc[seen_before, "actual"]).any()
    # From the first changed hour on, the forecasts move with it.
    assert not np.allclose(a.loc[~seen_before, "model"], b.loc[~seen_before, "model"])


# --- the pieces around the walk --------------------------------------------------------------


def test_hourly_from_records_keeps_what_silver_keeps():
    stamp = pd.Timestamp("2017-01-01", tz="UTC")
    records = pl.DataFrame(
        {
            "station_id": ["denver"] * 4,
            "timestamp": [stamp, stamp + pd.Timedelta(minutes=30), stamp, stamp],
            "temperature": [10.0, 12.0, 99.0, 11.0],  # 99 °C is out of range: quarantined
            "humidity": [50.0, 60.0, 55.0, None],
            "pressure": [1000.0, 1000.0, 1000.0, 1000.0],
            "wind_speed": [1.0, 1.0, 1.0, 1.0],
            "wind_direction": [400.0, 90.0, 90.0, 90.0],  # optional: 400 ° becomes null
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )
    hourly = hourly_from_records(records, WEATHER)
    assert len(hourly) == 1
    row = hourly.iloc[0]
    assert row["ds"] == pd.Timestamp("2017-01-01")
    assert row["temperature"] == pytest.approx(11.0)  # (10 + 12 + 11) / 3
    assert row["humidity"] == pytest.approx(55.0)  # (50 + 60) / 2
    assert row["wind_direction"] == pytest.approx(90.0)


def test_default_span_is_the_last_three_months_with_every_target():
    ds = pd.date_range("2017-01-01", "2017-06-15", freq="h")
    hourly = pd.DataFrame(
        {
            "station_id": "denver",
            "ds": ds,
            "temperature": 1.0,
            "humidity": np.where(ds < pd.Timestamp("2017-05-01"), 1.0, np.nan),
            "pressure": 1.0,
        }
    )
    assert default_span(hourly, WEATHER) == (pd.Timestamp("2017-02-01"), pd.Timestamp("2017-05-01"))


@pytest.mark.parametrize("text", ["0d", "week", "7", "-1d"])
def test_parse_every_refuses_what_is_no_interval(text):
    with pytest.raises(ValueError, match="retrain interval"):
        parse_every(text)
