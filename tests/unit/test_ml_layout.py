"""ml/'s layout: the always-on gold stage stands without the training code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]


def _modules_after_import(module: str) -> set[str]:
    """The ml modules a fresh interpreter has loaded after importing `module`."""
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('ml')))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_importing_the_gold_stage_does_not_import_training():
    loaded = _modules_after_import("ml.gold")
    assert {"ml.gold.rounds", "ml.gold.actors", "ml.ray_session"} <= loaded
    assert not {m for m in loaded if m == "ml.training" or m.startswith("ml.training.")}
