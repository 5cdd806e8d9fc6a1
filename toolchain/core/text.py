"""Quoting what came from files (paths, class names, layer names) in our own output.

A class folder named ``a|b`` or a file name with a newline is user data: it
must not split an error line, break a table row or inject Markdown into a
report. Every module that prints such names goes through these three.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Sequence

# Characters that start Markdown syntax (tables, emphasis, links, HTML, headings, code).
MARKDOWN_SPECIAL = frozenset("\\|*_[]<>#`")


def single_line(text: Any) -> str:
    """``text`` with newlines and control characters as spaces: a quoted file or class
    name must not split an error line or a table row."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(text))


def few(items: Sequence[Any], limit: int = 5) -> str:
    """The first ``limit`` items, each shortened, so a list of 1,000 labels stays one line."""
    shown = ", ".join(single_line(repr(item))[:40] for item in list(items)[:limit])
    more = f", … ({len(items)} in all)" if len(items) > limit else ""
    return f"[{shown}{more}]"


def markdown_cell(text: Any) -> str:
    """``text`` as literal Markdown: a class named ``a|b`` or a path with backticks must not
    split a table cell, open a code span, or inject a link or HTML into parity.md.

    An underscore between two letters or digits stays as it is: Markdown never
    reads it as emphasis, and layer and file names (``block_16_project_BN``)
    stay greppable and copyable in the raw file.
    """
    plain = single_line(text)
    return "".join(
        "\\" + c if c in MARKDOWN_SPECIAL and not _inert_underscore(plain, i) else c
        for i, c in enumerate(plain)
    )


def _inert_underscore(text: str, i: int) -> bool:
    return (
        text[i] == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
    )
