"""Model training (Ray), evaluation, the MLflow registry and Ray scoring into gold.

Not built yet (issue: ML).
"""
