"""The description a command's --help shows: the first paragraph of its module's docstring,
whole (its first line alone stops mid-sentence)."""

from __future__ import annotations


def description(doc: str | None) -> str:
    """`doc`'s first paragraph on one line, without the backquotes of markdown."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split()).replace("`", "")
