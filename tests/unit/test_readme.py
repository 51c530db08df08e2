"""README promises that must stay true: CI runs the README's test command; the install-and-run command is one
line; the config reference is exactly what the code generates."""

from __future__ import annotations

import re

from serve_app.devtools.config_docs import markdown
from tests.conftest import REPO

COMMANDS_HEADING = "## The two commands"


def _readme() -> str:
    return (REPO / "README.md").read_text()


def _section(heading: str) -> str:
    text = _readme()
    assert heading in text.splitlines(), f"README has no {heading!r} section"
    body = text.split(f"\n{heading}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def _two_commands() -> tuple[str, str]:
    """(install-and-run, test) bash blocks of the "The two commands" section, in that order."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", _section(COMMANDS_HEADING), re.S | re.M)
    assert len(blocks) == 2, f"expected exactly two bash blocks under {COMMANDS_HEADING!r}: {blocks}"
    return blocks[0], blocks[1]


def _ci_commands() -> list[str]:
    """.ci/run's lines that are not blank, comments, the shebang or shell setup."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")
            and not re.match(r"(set|cd|export) ", line)]


def test_ci_runs_exactly_the_readme_test_command():
    _, test_block = _two_commands()
    lines = test_block.splitlines()
    assert len(lines) == 1 and not lines[0].endswith("\\"), f"the test command must be one line: {test_block!r}"
    test_cmd = lines[0]
    assert test_cmd == test_cmd.strip() and "pytest" in test_cmd, test_cmd
    ci = _ci_commands()
    assert ci and ci[-1] == test_cmd, f".ci/run's last command {ci[-1:]} != README's {test_cmd!r}"
    assert ci.count(test_cmd) == 1, ".ci/run runs the test command once"


def test_readme_install_and_run_is_one_line():
    install_block, _ = _two_commands()
    lines = install_block.splitlines()
    assert len(lines) == 1 and not lines[0].endswith("\\"), f"install-and-run must be one line: {install_block!r}"
    cmd = lines[0]
    steps = [s.strip() for s in cmd.split("&&")]
    assert steps[0] == "pip install -e .", f"first step installs the package (no extras): {steps}"
    assert any(re.match(r"python3? -m serve_app\.devtools\.tiny_model \S+$", s) for s in steps), steps
    run = [s for s in steps if re.search(r"(^|\s)sam3-serve run(\s|$)", s)]
    assert len(run) == 1 and steps[-1] == run[0], f"the command ends by running the service: {steps}"
    tiny_dir = next(s for s in steps if "serve_app.devtools.tiny_model" in s).split()[-1]
    assert f"--model-id {tiny_dir}" in run[0], "serves the tiny checkpoint it just built"


def _config_table() -> str:
    lines = _readme().splitlines()
    start = lines.index("| key | default | meaning |")
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    assert "| key | default | meaning |" not in lines[end:], "README has a second config table"
    return "\n".join(lines[start:end])


def test_config_reference_matches_appconfig():
    assert _config_table() == markdown(), "regenerate with: python -m serve_app.devtools.config_docs"
