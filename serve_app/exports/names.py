"""Names inside an export ZIP: file-name-safe components (`safe_name`) and checked member paths (`member`).

Every ZIP member name is built with `member`, from parts that are either constants of the layout or went
through `safe_name`; user text (instance names, group names) never reaches a member name any other way. A
name that would escape the archive root when unzipped (absolute, "..", backslash, empty part) raises.
"""

from __future__ import annotations

import re

MAX_NAME_CHARS = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UNDERSCORES = re.compile(r"_{2,}")
# Names Windows refuses as a file name whatever the extension (a stem equal to one gets a "_" appended).
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def _clean(value: str) -> str:
    text = _UNDERSCORES.sub("_", _UNSAFE.sub("_", value)).lstrip("._")[:MAX_NAME_CHARS].rstrip(".")
    if text.split(".")[0].upper() in _RESERVED:
        text = text[:MAX_NAME_CHARS - 1] + "_"
    return text


def safe_name(value: str, fallback: str) -> str:
    """A file-name-safe component for `value`: only [A-Za-z0-9._-]; any run of other characters (and any run
    of "_") becomes one "_"; leading dots/underscores and trailing dots are stripped; at most 64 characters;
    a Windows-reserved stem (CON, NUL, COM1, ...) gets "_" appended. Never "", "." or "..": when nothing is
    left, `fallback` (cleaned the same way; ValueError if that is empty too)."""
    text = _clean(value)
    if text:
        return text
    text = _clean(fallback)
    if not text:
        raise ValueError(f"fallback name {fallback!r} has no safe characters")
    return text


def member(*parts: str) -> str:
    """Join already-safe parts with "/" into a ZIP member name, checked to stay inside the archive root:
    relative (no leading "/"), no backslash, no NUL, no ":" (drive letters), no empty, "." or ".." part.
    A part may itself hold "/" (e.g. a root "export/run1"); the check is on the joined result.
    ValueError otherwise."""
    name = "/".join(parts)
    if not parts or not name or "\\" in name or "\x00" in name or ":" in name:
        raise ValueError(f"unsafe ZIP member name {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"unsafe ZIP member name {name!r}")
    return name
