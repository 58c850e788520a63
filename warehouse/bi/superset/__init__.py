"""Superset: the dashboards bundle (bundle/), its lock (requirements.lock) and the code that
provisions, checks and exports the dashboards through Superset's REST API."""

from pathlib import Path

BUNDLE_DIR = Path(__file__).parent / "bundle"
