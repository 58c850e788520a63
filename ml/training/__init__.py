"""Training: `periscope train`, `retrain` and `models promote`, and the retrain schedule (moved here; split next)."""

from ml.training.run import (
    AnomalyOutcome,
    ForecastOutcome,
    PromotionPolicy,
    TrainConfig,
    TrainReport,
    anomaly_test_set,
    compare_anomaly,
    compare_forecast,
    make_split,
    promote_if_better,
    promote_version,
    run_training,
    train_anomaly,
    train_forecasts,
)

__all__ = [
    "AnomalyOutcome",
    "ForecastOutcome",
    "PromotionPolicy",
    "TrainConfig",
    "TrainReport",
    "anomaly_test_set",
    "compare_anomaly",
    "compare_forecast",
    "make_split",
    "promote_if_better",
    "promote_version",
    "run_training",
    "train_anomaly",
    "train_forecasts",
]
