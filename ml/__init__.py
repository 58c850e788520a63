"""Models: training on Ray (Prophet forecasts, IsolationForest anomalies), evaluation against
baselines, the MLflow registry with a `champion` alias, and the daily retrain schedule.

Pure parts: `forecast`, `anomaly`, `windows`, `scoring` (feature windows -> gold rows). I/O around them: `data` (lake reads), `registry`
(MLflow), `training` (Ray orchestration and promotion), `schedule` (APScheduler), `cli`.
"""
