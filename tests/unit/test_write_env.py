from __future__ import annotations

import stat
import subprocess
import sys

from periscope.settings import PROJECT_DIR


def _write(tmp_path, name):
    target = tmp_path / name
    subprocess.run(
        [
            sys.executable,
            str(PROJECT_DIR / "scripts/write_env.py"),
            str(PROJECT_DIR / ".env.example"),
            str(target),
        ],
        check=True,
    )
    return target


def test_env_gets_random_private_passwords(tmp_path):
    first, second = _write(tmp_path, "a.env"), _write(tmp_path, "b.env")
    text = first.read_text()
    assert "change-me" not in text
    passwords = [line.split("=", 1)[1] for line in text.splitlines() if "_PASSWORD=" in line]
    # Postgres owner and bi_reader, Superset's admin.
    assert len(passwords) == 3 and all(len(p) >= 20 for p in passwords)
    assert len(set(passwords)) == len(passwords)
    [secret_key] = [line.split("=", 1)[1] for line in text.splitlines() if "_SECRET_KEY=" in line]
    assert len(secret_key) >= 20 and secret_key not in passwords
    assert passwords != [
        line.split("=", 1)[1] for line in second.read_text().splitlines() if "_PASSWORD=" in line
    ]
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
