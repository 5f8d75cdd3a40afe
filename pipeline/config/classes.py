"""Class names, so a config can name the classes it watches and a typo is caught before anything
starts: checked against the model's own names (ImageNet's for the shipped model, whose list is
`imagenet_classes.txt`, readable without onnxruntime or torch).

For ImageNet's names a config may also watch a group (`dog`: any of the 118 breeds): a WordNet
synset and the classes under it, from `imagenet_groups.json` (written by tools/imagenet_groups.py
from WordNet 3.0, with each class's WordNet id). A class name wins over a group name (none is
both). A name that is neither gets the closest names: groups first, then the classes it is a
synonym of in WordNet ('taxi': 'cab'), then those it is a whole word of ('bottle': 'water bottle',
'wine bottle', ...), then those spelled alike."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")
GROUPS_FILE = Path(__file__).with_name("imagenet_groups.json")
LIST_HINT = "pipeline-up --list-classes lists them all"
MAX_HINTS = 8  # names an error proposes at most
# What people type for people: ImageNet has no such class (see `people_hint`).
PEOPLE = {"person", "persons", "people", "human", "humans", "man", "men", "woman", "women",
          "child", "children", "kid", "kids", "boy", "girl", "pedestrian", "pedestrians", "face",
          "someone", "somebody", "individual", "intruder", "visitor"}


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 names, index i = class i."""
    return tuple(CLASSES_FILE.read_text().splitlines())


@cache
def _groups_file() -> dict:
    return json.loads(GROUPS_FILE.read_text())


@cache
def imagenet_groups() -> dict[str, tuple[int, ...]]:
    """Group name -> its ImageNet class indices (ascending), in the file's order."""
    return {name: tuple(g["classes"]) for name, g in _groups_file()["groups"].items()}


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """Each ImageNet class's WordNet id ('n01440764'), index i = class i."""
    return tuple(_groups_file()["wnids"])


def group_synset(name: str) -> str:
    """The WordNet synset a group is ('dog, domestic dog, Canis familiaris'), with its id."""
    g = _groups_file()["groups"][name]
    return f"{g['wnid']} {g['synset']}"


@cache
def groups_of_class() -> tuple[tuple[str, ...], ...]:
    """The groups each ImageNet class is in (index i = class i), in the file's order."""
    out: list[list[str]] = [[] for _ in imagenet_classes()]
    for name, members in imagenet_groups().items():
        for i in members:
            out[i].append(name)
    return tuple(tuple(g) for g in out)


def is_imagenet(names: Sequence[str]) -> bool:
    """Whether a model with these class names has ImageNet's (groups apply)."""
    return len(names) == 1000 and tuple(names) == imagenet_classes()


def group_key(text: str) -> str:
    """How a group name is looked up: lower case, single spaces."""
    return " ".join(text.lower().split())


@dataclass(frozen=True, slots=True)
class Watched:
    """What a `watch` item (or `on`) stands for: a class (a name two classes share: both), or an
    ImageNet group."""

    name: str  # the class's name as the model has it, or the group's
    indices: tuple[int, ...]
    group: bool = False


def resolve(name_or_index: int | str, key: str, names: Sequence[str], model: str) -> Watched:
    """The class(es) of `model` (whose class names are `names`) or the ImageNet group that
    `name_or_index` stands for (an index, or a name, case-insensitive); ValueError naming `key` and
    the closest names when it stands for none."""
    imagenet = is_imagenet(names)
    what = "an ImageNet class" if imagenet else f"a class of {model}"
    if isinstance(name_or_index, int):
        if not 0 <= name_or_index < len(names):
            raise ValueError(f"{key}: class index {name_or_index} is not {what} "
                             f"(0 to {len(names) - 1})")
        return Watched(names[name_or_index], (name_or_index,))
    wanted = name_or_index.strip().lower()
    found = tuple(i for i, n in enumerate(names) if n.lower() == wanted)
    if found:
        return Watched(names[found[0]], found)
    if imagenet:
        group = group_key(name_or_index)
        if group in imagenet_groups():
            return Watched(group, imagenet_groups()[group], group=True)
    raise ValueError(unknown_name(name_or_index, key, names, model))


def class_indices(name_or_index: int | str, key: str, names: Sequence[str], model: str) -> list[int]:
    """The class indices of `model` (whose class names are `names`) that `name_or_index` stands
    for (an index, a name, case-insensitive, or an ImageNet group: its classes); ValueError naming
    `key` and the closest names when it stands for none."""
    return list(resolve(name_or_index, key, names, model).indices)


def unknown_name(given: str, key: str, names: Sequence[str], model: str) -> str:
    """The one line for a name that is neither a class of the model nor a group."""
    imagenet = is_imagenet(names)
    if imagenet and _singulars(group_key(given)) & (PEOPLE | _lemmas(_groups_file()["people"])):
        return f"{key}: {given!r} is not an ImageNet class or group: {people_hint()}"
    what = "an ImageNet class or group" if imagenet else f"a class of {model}"
    if not imagenet and len(names) <= 20:
        return f"{key}: {given!r} is not {what} (its classes: {', '.join(repr(n) for n in names)})"
    hints = closest(given, names)
    listing = LIST_HINT if imagenet else "pipeline-up CONFIG --list-classes lists them all"
    if not hints:
        return f"{key}: {given!r} is not {what} (give a class name or an index 0-{len(names) - 1}; " \
               f"{listing})"
    return f"{key}: {given!r} is not {what} (closest: {', '.join(hints)}; {listing})"


def people_hint() -> str:
    """What to say to a config that watches people."""
    classes = ", ".join(repr(imagenet_classes()[i]) for i in _groups_file()["people"]["classes"])
    return (f"ImageNet has no class for people (its only classes of people are {classes}), and a "
            "classifier of the whole frame is not a person detector: a frame with someone in it "
            "gets the class of what fills it (see the README, 'What the model can tell'); classify "
            "a region of interest (source.roi) or train classes of your own (pipeline-train)")


def closest(given: str, names: Sequence[str]) -> list[str]:
    """The names to propose for `given`, best first, each quoted (a group with its size): for
    ImageNet's names, the groups that are it or its singular, have it among their synonyms or their
    words, or are spelled alike, then the classes it is a WordNet synonym of ('taxi': 'cab';
    'horse': 'sorrel'); then the classes it is a whole word of, those it names first ('car':
    'sports car' before 'car wheel'); then the names spelled alike. At most MAX_HINTS."""
    wanted = group_key(given)
    forms = _singulars(wanted)
    lowered = [n.lower() for n in names]
    out: list[str] = []
    seen: set[str] = set()

    def add(text: str, shown: str) -> None:
        if text not in seen and len(out) < MAX_HINTS:
            seen.add(text)
            out.append(shown)

    if is_imagenet(names):
        groups = imagenet_groups()
        exact = [g for g in groups if g in forms]
        synonym = [g for g in groups if forms & _lemmas(_groups_file()["groups"][g])]
        word = [g for g in groups if forms & set(g.split())]
        alike = difflib.get_close_matches(wanted, list(groups), n=3, cutoff=0.75)
        for g in exact + synonym + word + alike:
            add(g, f"{g!r} (a group of {len(groups[g])} classes)")
        words = _words()
        for form in sorted(forms, key=len, reverse=True):  # ImageNet's synonyms: 'taxi': 'cab'
            for i in words.get(form, ()):
                add(lowered[i], repr(names[i]))
    heads, others = [], []
    for i, n in enumerate(lowered):
        words = re.split(r"[\s-]+", n)
        for form in forms:
            form_words = form.split()
            k = len(form_words)
            spans = [j for j in range(len(words) - k + 1) if words[j:j + k] == form_words]
            if spans:
                (heads if spans[-1] + k == len(words) else others).append(i)
                break
    for i in heads + others:
        add(lowered[i], repr(names[i]))
    for n in difflib.get_close_matches(wanted, lowered, n=4, cutoff=0.6):
        add(n, repr(names[lowered.index(n)]))
    return out


@cache
def _words() -> dict[str, tuple[int, ...]]:
    """The file's `words`, each also under its singulars ('cows': 'cow')."""
    out: dict[str, list[int]] = {}
    for word, classes in _groups_file()["words"].items():
        for form in _singulars(word):
            out.setdefault(form, []).extend(i for i in classes if i not in out.get(form, ()))
    return {w: tuple(c) for w, c in out.items()}


def _singulars(text: str) -> set[str]:
    """`text` and what it may be the plural of ('boxes': 'boxe', 'box'; 'butterflies')."""
    out = {text}
    if text.endswith("s") and len(text) > 3:
        out.add(text[:-1])
        if text.endswith("es"):
            out.add(text[:-2])
        if text.endswith("ies"):
            out.add(text[:-3] + "y")
    return out


def _lemmas(entry: dict) -> set[str]:
    """The synonyms of a group's synset, as looked up."""
    return {group_key(lemma) for lemma in entry.get("synset", "").split(", ") if lemma}
