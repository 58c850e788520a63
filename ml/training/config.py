"""What a training run is told: the data split, the model settings, the promotion policy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import pandas as pd

from ml import forecast
from ml.forecast import Split, temporal_split

if TYPE_CHECKING:
    from periscope.contracts import SourceContract

__all__ = ["Progress", "PromotionPolicy", "TrainConfig"]

PromotionPolicy = Literal["if-none", "if-better", "never"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class TrainConfig:
    """How much data, which split, and the model settings of one training run."""

    test_days: float = 7.0
    # Four weeks of hourly origins choose the served method and calibrate the bands (about
    # 650 residuals per series and horizon); a week gave noisy choices.
    validation_days: float = 28.0
    # The global model learns from up to two years (every season twice); Prophet keeps its
    # own shorter window (ForecastConfig.prophet_train_days). 120 days let Prophet's trend
    # extrapolate one season into the next.
    max_train_days: float | None = 730.0
    series_per_task: int = 4
    anomaly_rate: float = 0.02
    # Thresholds flag at most this share of validation's clean windows: half the 0.5 % an
    # operator accepts, because another month's clean windows hold their own real faults
    # (weather, chosen on October 2016 at 0.5 %: 0.87 % of November-December flagged; at
    # 0.25 %: 0.25 %, and 0.18 % of March-April).
    anomaly_max_false_alarm: float = 0.0025
    anomaly_seed: int = 7
    # The learned detector trains on faults injected into the training span's last 240 days,
    # repeated (other seeds) until about 600k windows, at most 30 times: weather's 36 stations
    # 3 times (a minute's fit on 2 cores), air quality's one station 30 times (test F1 alone
    # 0.49 against 0.14 with 3).
    anomaly_learned_days: float = 240.0
    anomaly_learned_windows: int = 600_000
    anomaly_learned_max_repeats: int = 30
    anomaly_estimators: int = 200
    forecast: forecast.ForecastConfig = field(default_factory=forecast.ForecastConfig)

    def split(self, first: pd.Timestamp, end: pd.Timestamp) -> Split:
        """The split of the hours [first, end): test the last `test_days`, validation the
        `validation_days` before it but at most a quarter of what is left (a short lake still
        trains on most of its history), train the rest (at most `max_train_days`)."""
        span_days = (pd.Timestamp(end) - pd.Timestamp(first)) / pd.Timedelta(days=1)
        validation_days = min(self.validation_days, max(1.0, (span_days - self.test_days) / 4))
        return temporal_split(
            first,
            pd.Timestamp(end) - pd.Timedelta(hours=1),
            test_days=self.test_days,
            validation_days=validation_days,
            max_train_days=self.max_train_days,
        )

    def for_source(self, contract: SourceContract) -> TrainConfig:
        """This config as the source's contract adjusts its forecasts (`source_config`)."""
        return replace(self, forecast=forecast.source_config(self.forecast, contract))

    def params(self) -> dict[str, object]:
        flat = {k: v for k, v in asdict(self).items() if k != "forecast"}
        flat.update({f"forecast_{k}": v for k, v in asdict(self.forecast).items()})
        return flat
