"""`pipeline-up --list-classes [WORD]` and `--list-groups`: the names `source.state.watch` takes,
for the configured model (its own labels for a model of your own, ImageNet's for the shipped one;
ImageNet's without a config), read without onnxruntime or torch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config.classes import (
    closest,
    group_key,
    group_synset,
    groups_of_class,
    imagenet_classes,
    imagenet_groups,
    is_imagenet,
)


def model_names(model_cfg: Any | None) -> tuple[str, list[str]]:
    """(the model's name, its class names) as the pipeline would have them: `model.labels`, else
    the names an ONNX file carries, else ImageNet's (the shipped model, torchvision's models);
    ModelFileError (a UserError) in one line for a file that cannot be read."""
    if model_cfg is None:
        return "mobilenet_v2", list(imagenet_classes())
    from workers.inference.model_meta import own_labels, read_labels_file, read_model

    weights = model_cfg.weights
    name = model_cfg.name
    onnx = weights.lower().endswith(".onnx")
    if onnx:
        meta, shape = read_model(weights)
        name = meta.get("model") or Path(weights).stem
    if model_cfg.labels:
        return name, read_labels_file(model_cfg.labels)
    if onnx:
        return name, own_labels(meta, shape[-1] if shape else None)
    return name, list(imagenet_classes())


def list_classes(model: str, names: list[str], word: str, say: Callable[[str], None],
                 complain: Callable[[str], None]) -> int:
    """Each class: index, name and (ImageNet's) the groups it is in, smallest first; with `word`
    only those whose name has it, that are in a group of that name, or whose index it is."""
    imagenet = is_imagenet(names)
    groups = imagenet_groups() if imagenet else {}
    in_groups = groups_of_class() if imagenet else ((),) * len(names)
    wanted = group_key(word)
    rows = [i for i, n in enumerate(names)
            if not wanted or wanted in n.lower() or wanted in in_groups[i] or wanted == str(i)]
    if not rows:
        hints = closest(word, names)
        complain(f"--list-classes {word}: no class of {model} has {word!r} in its name"
                 + (" or group" if imagenet else "")
                 + (f" (closest: {', '.join(hints)})" if hints else ""))
        return 1
    kind = "ImageNet classes" if imagenet else "classes of its own"
    shown = f"{len(rows)} of {len(names)}" if wanted else str(len(names))
    say(f"# {model}: {shown} {kind}; source.state.watch takes a name or an index"
        + (", or a group (--list-groups): the last column" if imagenet else ""))
    width = max(len(names[i]) for i in rows)
    digits = len(str(len(names) - 1))
    for i in rows:
        member = sorted(in_groups[i], key=lambda g: len(groups[g]))
        say(f"{i:>{digits}}  {names[i]:<{width}}  {', '.join(member)}".rstrip())
    return 0


def list_groups(model: str, names: list[str], say: Callable[[str], None],
                complain: Callable[[str], None]) -> int:
    """Each ImageNet group: name, number of classes, the WordNet synset it is."""
    if not is_imagenet(names):
        complain(f"--list-groups: the groups are of ImageNet's classes; {model} has "
                 f"{len(names)} classes of its own (--list-classes lists them)")
        return 1
    groups = imagenet_groups()
    say(f"# {len(groups)} groups of ImageNet's classes: source.state.watch = [\"dog\"] watches any "
        "of its classes (--list-classes NAME lists them); each is a WordNet synset and the "
        "classes under it")
    width = max(len(g) for g in groups)
    for name, members in groups.items():
        say(f"{name:<{width}}  {len(members):>3}  {group_synset(name)}")
    return 0


def run(args: Any, load: Callable[[], Any]) -> int:
    """The listing `args` asks for (`list_classes`: a word or ""; `list_groups`); `load` gives
    the config (None without one), raising ConfigError."""
    from pipeline.config import ConfigError
    from pipeline.errors import UserError

    def complain(text: str) -> None:
        print(f"pipeline-up: {text}", file=sys.stderr)

    try:
        config = load()
    except ConfigError as e:
        complain(f"config error: {e}")
        return 2
    try:
        model, names = model_names(config.model if config is not None else None)
    except UserError as e:  # a model file or labels file that cannot be read
        complain(str(e))
        return 2
    try:
        if args.list_groups:
            return list_groups(model, names, print, complain)
        return list_classes(model, names, args.list_classes, print, complain)
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
        return 0
