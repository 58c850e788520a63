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


@pytest.fixture(autouse=True, scope="session")
def _one_openmp_thread():
    """Tests fit small models: OpenMP's spinning worker threads cost more than they give on
    two shared cores (a 744-row gradient-boosting fit took 26 s with them, 1 s without)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield
