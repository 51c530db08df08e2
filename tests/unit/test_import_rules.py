"""DESIGN.md's import rules, checked on the source (every import statement, module- or function-level)
and at run time (what the ingress process actually loads)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "serve_app"

# package (or top-level module) -> the serve_app packages/modules it may import besides itself
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "errors": set(),
    "schemas": set(),
    "storage": {"config", "errors"},
    "model": {"config", "errors"},
    "codecs": {"config", "errors"},
    "cluster": {"config", "errors"},
    "exports": {"errors", "schemas", "codecs"},
    "jobs": {"config", "errors", "storage"},
    "sessions": {"config", "errors", "storage", "model", "codecs"},
    "pipelines": {"config", "errors", "schemas", "storage", "codecs", "jobs", "model.types", "model.video_types",
                  "sessions", "exports"},
    "deployments": {"config", "errors", "schemas", "storage", "codecs", "jobs", "model", "pipelines", "sessions"},
    "ingress": {"config", "errors", "schemas", "storage", "codecs", "jobs", "pipelines", "cluster", "sessions",
                "model.types", "model.video_types"},
    "devtools": {"config", "errors"},
    "app": {"config", "deployments", "ingress"},
    "cli": {"config", "cluster", "devtools"},
    "web": set(),  # static files only (HTML, CSS, ES modules); its __init__.py makes it package data
}


def _owner(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[str]:
    """Dotted serve_app modules `path` imports (absolute imports only: the package uses no relative ones)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("serve_app"):
            assert node.level == 0, f"{path}: relative import"
            found += [node.module] if node.module != "serve_app" else [f"serve_app.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("serve_app.")]
    return [m.removeprefix("serve_app.") for m in found]


def _allowed(owner: str, target: str) -> bool:
    if target.split(".")[0] == owner:
        return True
    return any(target == rule or target.startswith(rule + ".") for rule in ALLOWED[owner])


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_layering(path):
    owner = _owner(path)
    if owner == "__init__":
        return
    assert owner in ALLOWED, f"new package {owner}: add its import rule to this test and to docs/ARCHITECTURE.md"
    bad = [t for t in _imports(path) if not _allowed(owner, t)]
    assert not bad, f"{path.relative_to(PKG)} ({owner}) may not import {bad}"


def test_the_ingress_never_loads_torch_or_transformers():
    code = ("import sys, serve_app.ingress.deployment, serve_app.deployments.job_worker, serve_app.app; "
            "print(sorted(m for m in ('torch', 'transformers', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_rules_catch_a_violation(tmp_path):
    """The checker itself can fail: a model module importing the ingress is reported."""
    assert not _allowed("model", "ingress.fastapi_app") and not _allowed("storage", "model.concept")
    assert _allowed("ingress", "model.types") and not _allowed("ingress", "model.concept")
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from serve_app.ingress.fastapi_app import create_app\n")
    assert _imports(bad) == ["ingress.fastapi_app"]
