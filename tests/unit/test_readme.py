"""README promises that must stay true: CI runs the README's test command; the config reference is current."""

from __future__ import annotations

import re

from serve_app.devtools.config_docs import markdown
from tests.conftest import REPO


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", _readme(), re.S)
    test_cmd = next(b for b in blocks if "pytest" in b).strip()
    ci_lines = [line.strip() for line in (REPO / ".ci/run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci_lines[-1] == test_cmd


def test_config_reference_matches_appconfig():
    assert markdown() in _readme(), "regenerate with: python -m serve_app.devtools.config_docs"


def test_readme_install_command_builds_the_tiny_model_and_runs():
    install = re.findall(r"```bash\n(.*?)\n```", _readme(), re.S)[0]
    assert "pip install -e ." in install and "serve_app.devtools.tiny_model" in install and " run " in install
