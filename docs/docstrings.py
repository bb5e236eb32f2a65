"""Read the package's docstrings as the reference renders them.

Three liberties the docstrings take with Google style, made plain for griffe: Sphinx-style roles
(``:func:`name```) become inline code (the last part only when the name starts with ``~``, the
title when one is given: ``:meth:`title <target>```); an ``Example:`` section is read as
``Examples:`` (so its doctests render as code); and an ``Args:`` entry naming several parameters
(``a, b: text``) becomes one entry per parameter with the same text.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|attr|mod|data|exc|obj):`([^`]+)`")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_SECTION = re.compile(r"^(\s*)(\w[\w ]*):\s*$")
_SHARED_ENTRY = re.compile(r"^(\s*)(\**\w+(?:\s*,\s*\**\w+)+):(.*)$")


def _as_code(match: re.Match[str]) -> str:
    text = match.group(1).strip()
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", text)
    if titled:
        text = titled.group(1)
    elif text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_shared_entries(text: str) -> str:
    """One entry per parameter in ``Args:`` sections, for entries that name several."""
    lines, out, index = text.splitlines(), [], 0
    section_indent: int | None = None
    while index < len(lines):
        line = lines[index]
        header = _SECTION.match(line)
        if header:
            is_args = header.group(2).lower() in ("args", "arguments", "parameters")
            section_indent = _indent(line) if is_args else None
            out.append(line)
            index += 1
            continue
        if line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None
        entry = _SHARED_ENTRY.match(line) if section_indent is not None else None
        if entry is None:
            out.append(line)
            index += 1
            continue
        body = [entry.group(3)]
        index += 1
        while index < len(lines) and (
            not lines[index].strip() or _indent(lines[index]) > _indent(line)
        ):
            body.append(lines[index])
            index += 1
        for name in re.split(r"\s*,\s*", entry.group(2)):
            out.append(f"{entry.group(1)}{name}:{body[0]}")
            out.extend(body[1:])
    return "\n".join(out)


class DocstringsAsRendered(Extension):
    """Rewrite every docstring griffe loads, as the module docstring describes."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _ROLE.sub(_as_code, obj.docstring.value)
            value = _EXAMPLE.sub(r"\1Examples:", value)
            obj.docstring.value = _split_shared_entries(value)
