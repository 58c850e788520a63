from __future__ import annotations

import pytest

from periscope.settings import Settings


@pytest.fixture(autouse=True)
def _unit_settings(monkeypatch):
    """Unit tests see defaults plus what they set: no developer `.env`, fixed passwords."""
    monkeypatch.setitem(Settings.model_config, "env_file", None)
    for name in list(__import__("os").environ):
        if name.startswith("PERISCOPE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PERISCOPE_POSTGRES_OWNER_PASSWORD", "owner-secret")
    monkeypatch.setenv("PERISCOPE_POSTGRES_BI_PASSWORD", "bi-secret")
