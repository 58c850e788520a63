"""Errors of forecasts against actuals: MAE, RMSE, MAPE per method, band coverage, relative MAE."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["METHODS", "METRIC_COLUMNS", "error_metrics", "relative_mae"]

# Columns of an errors frame (`ForecastBundle.evaluate`) that hold a forecast: what gold
# serves, then each candidate.
METHODS = ("served", "prophet", "gbm", "seasonal_naive", "persistence")
# Temperatures cross 0 °C: percentage errors near zero actuals would swamp the mean.
MAPE_MIN_ABS_ACTUAL = 1.0

METRIC_COLUMNS = [
    *(f"{metric}_{method}" for method in METHODS for metric in ("mae", "rmse", "mape")),
    "coverage",
    "n",
]


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def _metrics_of(errors: pd.DataFrame) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for method in METHODS:
        made = errors[errors[method].notna()] if method in errors else errors.iloc[:0]
        actual = made["actual"].to_numpy(dtype=float)
        error = made[method].to_numpy(dtype=float) - actual if len(made) else np.zeros(0)
        large = np.abs(actual) >= MAPE_MIN_ABS_ACTUAL
        metrics[f"mae_{method}"] = _mean(np.abs(error))
        metrics[f"rmse_{method}"] = math.sqrt(_mean(error**2))
        metrics[f"mape_{method}"] = 100 * _mean(np.abs(error[large] / actual[large]))
    inside = (errors["actual"] >= errors["yhat_lower"]) & (errors["actual"] <= errors["yhat_upper"])
    metrics["coverage"] = _mean(inside.to_numpy())
    metrics["n"] = len(errors)
    return metrics


def error_metrics(errors: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """MAE, RMSE and MAPE (%) of each method, the served band's coverage, and row count n.

    One row overall (`by=None`) or one per group of `by` (e.g. ["entity_id", "measure"]).
    Columns mae_<method>, rmse_<method>, mape_<method> for each of METHODS (a method's
    metrics use the rows where it made a forecast), coverage (share of actuals inside
    [yhat_lower, yhat_upper]) and n. MAPE uses only rows with |actual| >= 1.0; NaN when none.
    """
    if not by:
        return pd.DataFrame([_metrics_of(errors)], columns=METRIC_COLUMNS)
    rows = [
        {**dict(zip(by, key, strict=True)), **_metrics_of(group)}
        for key, group in errors.groupby(by, sort=True)  # a list `by` gives tuple keys
    ]
    return pd.DataFrame(rows, columns=[*by, *METRIC_COLUMNS])


def relative_mae(errors: pd.DataFrame, method: str = "served") -> float:
    """Mean over series of MAE(method) / MAE(seasonal_naive); below 1 beats "same hour
    yesterday". Each series counts once, on the rows where both made a forecast; series where
    seasonal naive is perfect or absent are left out. NaN when no series is left."""
    ratios = []
    for _, group in errors.groupby(["entity_id", "measure"]):
        both = group.dropna(subset=[method, "seasonal_naive"])
        naive_mae = (both["seasonal_naive"] - both["actual"]).abs().mean()
        if len(both) and naive_mae > 0:
            ratios.append((both[method] - both["actual"]).abs().mean() / naive_mae)
    return float(np.mean(ratios)) if ratios else math.nan
