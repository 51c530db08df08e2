"""Print the configuration reference (every AppConfig field, its default and description) as Markdown.

    python -m serve_app.devtools.config_docs     # the table in README.md "Configuration reference"
"""

from __future__ import annotations

import json

from pydantic import BaseModel

from serve_app.config import AppConfig


def rows(config: BaseModel, prefix: str = ""):
    """(dotted path, default, description) for every leaf of a default config, depth first."""
    for name, field in type(config).model_fields.items():
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            yield from rows(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", json.dumps(value), field.description or ""


def markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{p}` | `{d}` | {desc} |" for p, d, desc in rows(AppConfig())]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
