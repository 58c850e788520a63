"""The vocabulary of gold's prediction rows, read by the stage that writes them (ml) and the one
that models them (warehouse): one home, so a new forecaster or detector is named once."""

from __future__ import annotations

__all__ = ["ANOMALY_DETECTORS", "FORECAST_METHODS"]

# Every name a forecast item's `method` can hold (the forecaster served for its horizon, or
# the fallback that stood in for it); "mean" is the last resort, never chosen on validation.
FORECAST_METHODS = ("persistence", "seasonal_naive", "prophet", "gbm", "mean")

# The detectors a flagged window's `anomaly_kind` names, the most specific first: a flag names
# dropout or stuck when they fired, else the detector furthest past its threshold.
ANOMALY_DETECTORS = ("dropout", "stuck", "spike", "residual", "drift", "learned", "forest")
