"""`ConfigError`, and the wording that turns a pydantic ValidationError into lines a user can act on:
each problem names its key the way `--set` takes it back (`sources[0].path`), unknown keys and
values suggest the closest allowed one, and the first line sums up the whole on its own."""

from __future__ import annotations

import difflib
import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from pipeline.errors import UserError

from .schema import Config, Source, SyntheticSource

# Each source model by its `kind`, read from the Source union itself.
SOURCE_KINDS: dict[str, type[BaseModel]] = {
    get_args(m.model_fields["kind"].annotation)[0]: m for m in get_args(get_args(Source)[0])}
MAX_LISTED = 5  # problems listed, one a line; the rest are counted
# The tags pydantic appends to a location for each member of a plain union (`device: int | str`).
UNION_MEMBERS = {"int", "str", "float", "bool", "none"}
# What a source's missing `path` looks like on the command line, by the source's kind.
PATH_EXAMPLES = {"images": "'photos/*.jpg'", "video": "clip.mp4"}


class ConfigError(UserError):
    """A config problem, phrased for the user: one line, or with several problems, a first line that
    says it all for scripts, then the problems one a line."""


def describe(error: ValidationError, tree: dict) -> str:
    """Every problem pydantic found, one per key, as `key: problem (allowed ...)`: the first on a
    line of its own that counts the others, then up to MAX_LISTED in all, indented."""
    problems: dict[str, str] = {}
    for err in error.errors():
        key, text = _problem(err, tree)
        problems.setdefault(key, text)
    lines = list(problems.values())
    more = len(lines) - 1
    if not more:
        return lines[0]
    listed = [f"  {line}" for line in lines[1:MAX_LISTED]]
    if len(lines) > MAX_LISTED:
        listed.append(f"  ... and {len(lines) - MAX_LISTED} more")
    return "\n".join([f"{lines[0]} (and {more} more problem{'s' * (more > 1)})", *listed])


def closest(word: Any, choices: list[str]) -> str:
    """`did you mean X?` for the choice `word` most looks like a typo or a start of, else ""."""
    text = str(word).lower()
    started = [c for c in choices if len(text) >= 3 and c.lower().startswith(text)]
    match = started if len(started) == 1 else difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
    return f"did you mean {match[0]}?" if match else ""


def _location(err: dict) -> list[str]:
    """The error's key as parts, list indices folded in (`sources[0]`), pydantic's own tags out."""
    raw = err["loc"]
    tag_at = {"source": 1, "sources": 2}.get(raw[0]) if raw else None  # source[s] union's tag
    loc: list[str] = []
    for i, part in enumerate(raw):
        if isinstance(part, int) and loc:
            loc[-1] = f"{loc[-1]}[{part}]"
        elif not (i == tag_at and part in SOURCE_KINDS):
            loc.append(str(part))
    while len(loc) > 1 and loc[-1] in UNION_MEMBERS:
        loc.pop()
    return loc


def _problem(err: dict, tree: dict) -> tuple[str, str]:
    """(key, `key: problem`) for one pydantic error."""
    loc = _location(err)
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], tree)
        hint = closest(loc[-1], allowed)
        return key, f"{key}: unknown key ({hint or 'allowed here: ' + ', '.join(allowed)})"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = err.get("ctx", {}).get("tag")
        hint = closest(tag, list(SOURCE_KINDS)) if tag else ""
        return f"{key}.kind", f"{key}.kind: must be one of {', '.join(SOURCE_KINDS)}" + \
            (f" (got {tag!r}: {hint})" if hint else "")
    if kind == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
        own = loc[-1].split("[")[0] if loc else ""
        if own and msg.startswith(f"{own}: "):  # a field's own check: name it in full
            msg = f"{key}{msg[len(own):]}"
        elif len(loc) > 1 and msg.startswith(f"{loc[0].split('[')[0]}.{own}"):  # ... with its index
            msg = f"{key}{msg[len(loc[0].split('[')[0]) + 1 + len(own):]}"
        return key if loc else msg, msg  # a check of the whole config: its own problem
    if kind == "missing":
        example = next((PATH_EXAMPLES[p] for p in err["loc"] if p in PATH_EXAMPLES), "VALUE") \
            if loc[-1] == "path" else "VALUE"
        return key, f"{key}: required key is missing (give it in the config, or with --set {key}={example})"
    if kind == "string_pattern_mismatch" and loc[-1] in ("bind", "connect"):
        return key, f"{key}: {err['input']!r} is not tcp://ADDRESS:PORT (e.g. tcp://*:5550)"
    if kind == "literal_error":
        hint = closest(err["input"], re.findall(r"'([^']*)'", err["ctx"]["expected"]))
        return key, f"{key}: {err['msg']} (got {err['input']!r}{': ' + hint if hint else ''})"
    return key, f"{key}: {err['msg']} (got {err['input']!r})"


def _allowed_keys(loc: list[str], tree: dict) -> list[str]:
    """The keys the table at `loc` may hold."""
    model: type[BaseModel] = Config
    node: Any = tree
    for part in loc:
        name, _, index = part.partition("[")
        node = node.get(name) if isinstance(node, dict) else None
        if index and isinstance(node, list) and int(index[:-1]) < len(node):
            node = node[int(index[:-1])]
        if name in ("source", "sources"):
            kind = node.get("kind", "synthetic") if isinstance(node, dict) else "synthetic"
            model = SOURCE_KINDS.get(kind, SyntheticSource)
            continue
        if name not in model.model_fields:
            continue
        ann = model.model_fields[name].annotation
        for candidate in (ann, *get_args(ann)):
            for inner in (candidate, *get_args(candidate)):  # list[X] | None
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
    return list(model.model_fields)
