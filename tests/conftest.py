"""Shared test set-up: every test sees explicit settings, never the developer's `.env` values."""

from __future__ import annotations

import pytest

from periscope.settings import get_settings


@pytest.fixture(autouse=True)
def _fresh_settings_cache():
    """Settings are cached per process; tests that change the environment need a fresh read."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
