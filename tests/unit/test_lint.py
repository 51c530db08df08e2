"""The code passes ruff with the project's settings (pyproject.toml [tool.ruff])."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_ruff_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "serve_app", "tests", "loadtest"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
