"""Class names, so a config can name the classes it watches and a typo is caught before anything
starts: checked against the model's own names (ImageNet's for the shipped model, whose list is
`imagenet_classes.txt`, readable without onnxruntime or torch)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from functools import cache
from pathlib import Path

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 names, index i = class i."""
    return tuple(CLASSES_FILE.read_text().splitlines())


def class_indices(name_or_index: int | str, key: str, names: Sequence[str], model: str) -> list[int]:
    """The class indices of `model` (whose class names are `names`) that `name_or_index` stands
    for (an index, or a name, case-insensitive); ValueError naming `key` and the closest names
    when it stands for none."""
    what = "an ImageNet class" if tuple(names) == imagenet_classes() else f"a class of {model}"
    if isinstance(name_or_index, int):
        if not 0 <= name_or_index < len(names):
            raise ValueError(f"{key}: class index {name_or_index} is not {what} "
                             f"(0 to {len(names) - 1})")
        return [name_or_index]
    wanted = name_or_index.strip().lower()
    found = [i for i, n in enumerate(names) if n.lower() == wanted]
    if found:
        return found
    if len(names) <= 20:
        hint = "its classes: " + ", ".join(repr(n) for n in names)
    else:
        close = difflib.get_close_matches(wanted, [n.lower() for n in names], n=4, cutoff=0.6)
        hint = f"closest: {', '.join(repr(c) for c in close)}" if close else \
            f"give a class name or an index 0-{len(names) - 1}"
    raise ValueError(f"{key}: {name_or_index!r} is not {what} ({hint})")
