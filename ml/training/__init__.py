"""Training: `periscope train`, `retrain` and `models promote`, and the daily retrain schedule.

Models are trained on Ray, evaluated against baselines on the latest data, registered in MLflow
and promoted to `champion` only when better. One module per step:

- `run`: one training run (`run_training`): read the lake, split, train, register, promote.
- `forecasts`: every forecast candidate in parallel on Ray, the forecast comparison, `fit_until`.
- `anomalies`: the IsolationForest per source, its injected-anomaly test sets and comparison.
- `trips`: the taxi trip regressor (`ml.trips`) from silver's trips, promoted on duration MAE.
- `promotion`: the promotion rule and policies (`promote_version` for `models promote`).
- `config`: `TrainConfig` and the promotion policy names.
- `schedule`: APScheduler fires `retrain` for every source on a cron.

The always-on gold stage (`ml.gold`) does not import this package; both get Ray from
`ml.ray_session`.
"""

from ml.training.anomalies import AnomalyOutcome, anomaly_test_set, compare_anomaly, train_anomaly
from ml.training.config import Progress, PromotionPolicy, TrainConfig
from ml.training.forecasts import ForecastOutcome, compare_forecast, fit_until, train_forecasts
from ml.training.promotion import apply_policy, promote_if_better, promote_version
from ml.training.run import TrainReport, make_split, run_training
from ml.training.trips import TripOutcome, train_trip_kind

__all__ = [
    "AnomalyOutcome",
    "ForecastOutcome",
    "Progress",
    "PromotionPolicy",
    "TrainConfig",
    "TrainReport",
    "TripOutcome",
    "anomaly_test_set",
    "apply_policy",
    "compare_anomaly",
    "compare_forecast",
    "fit_until",
    "make_split",
    "promote_if_better",
    "promote_version",
    "run_training",
    "train_anomaly",
    "train_forecasts",
    "train_trip_kind",
]
