"""ImageNet-1k class names, so a config can name the classes it watches and a typo is caught
before anything starts. The list is the shipped model's own (`imagenet_classes.txt`, the labels
its results carry), readable without onnxruntime or torch."""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 names, index i = class i."""
    return tuple(CLASSES_FILE.read_text().splitlines())


def class_indices(name_or_index: int | str, key: str) -> list[int]:
    """The class indices `name_or_index` stands for (an index, or a name, case-insensitive);
    ValueError naming `key` and the closest names when it stands for none."""
    names = imagenet_classes()
    if isinstance(name_or_index, int):
        if not 0 <= name_or_index < len(names):
            raise ValueError(f"{key}: class index {name_or_index} is not an ImageNet class "
                             f"(0 to {len(names) - 1})")
        return [name_or_index]
    wanted = name_or_index.strip().lower()
    found = [i for i, n in enumerate(names) if n.lower() == wanted]
    if found:
        return found
    close = difflib.get_close_matches(wanted, [n.lower() for n in names], n=4, cutoff=0.6)
    hint = f"closest: {', '.join(repr(c) for c in close)}" if close else \
        "give an ImageNet class name or index 0-999"
    raise ValueError(f"{key}: {name_or_index!r} is not an ImageNet class ({hint})")
