"""The ml stage: models trained on Ray, registered in MLflow, and the gold stage that scores with them.

- `training/`: `periscope train`, `retrain` and `models promote` (Prophet forecasts, IsolationForest
  anomalies, evaluation against baselines, promotion of a better challenger) and `schedule`, the
  daily retrain and the hourly forecast health check on APScheduler.
- `health`: the forecasts' rolling 7-day accuracy read from the marts (`periscope models health`),
  the sources to retrain, Prometheus gauges.
- `gold/`: `periscope score`, the always-on stage: Ray actors score silver feature windows with
  the champion models into `gold/<source>_predictions` and `<source>-predictions`.
- `ray_session`: the Ray runtime (the configured cluster, or a local one with explicit CPUs) that
  both use; gold never imports `training`.
- Shared by both: `forecast`, `anomaly` and `trips` (the pure models; `trips` is the taxi trip
  regressor), `windows` (feature windows without
  Spark), `data` (lake reads), `registry` (MLflow, the `champion` alias); `cli` is the commands.
"""
