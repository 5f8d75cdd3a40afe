"""`ConfigError`, and the wording that turns a pydantic ValidationError into that one line."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ValidationError

from pipeline.errors import UserError

from .schema import Config, Source, SyntheticSource

# Each source model by its `kind`, read from the Source union itself.
SOURCE_KINDS: dict[str, type[BaseModel]] = {
    get_args(m.model_fields["kind"].annotation)[0]: m for m in get_args(get_args(Source)[0])}


class ConfigError(UserError):
    """A config problem, phrased as one line for the user."""


def _describe(error: ValidationError, tree: dict) -> str:
    """First pydantic error as `key: problem (allowed ...)`."""
    err = error.errors()[0]
    loc = [str(p) for p in err["loc"]]
    # Drop the discriminator tag pydantic inserts for the source union.
    kinds = SOURCE_KINDS
    if len(loc) > 1 and loc[0] == "source" and loc[1] in kinds:
        loc = [loc[0]] + loc[2:]
    if len(loc) > 2 and loc[0] == "sources" and loc[2] in kinds:
        loc = [f"sources[{loc[1]}]"] + loc[3:]
    if loc and loc[0] == "source" and len(loc) > 1 and loc[1] in ("int", "str"):
        loc = loc[:1]
    key = ".".join(loc) or "(top level)"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], tree)
        return f"{key}: unknown key (allowed here: {', '.join(allowed)}){suffix}"
    if kind == "union_tag_invalid" or kind == "union_tag_not_found":
        key = f"sources[{loc[1]}]" if loc[0] == "sources" and len(loc) > 1 else key
        return f"{key}.kind: must be one of {', '.join(SOURCE_KINDS)}{suffix}"
    if kind == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
        if loc and msg.startswith(f"{loc[-1]}: "):  # a field's own check: name it in full
            msg = f"{key}{msg[len(loc[-1]):]}"
        elif len(loc) > 2 and msg.startswith(f"{loc[0]}.{loc[-1]}"):  # ... with its list index
            msg = f"{key}{msg[len(loc[0]) + 1 + len(loc[-1]):]}"
        return f"{msg}{suffix}"
    if kind == "missing":
        return f"{key}: required key is missing{suffix}"
    if kind == "string_pattern_mismatch" and loc[-1] in ("bind", "connect"):
        return f"{key}: {err['input']!r} is not tcp://ADDRESS:PORT (e.g. tcp://*:5550){suffix}"
    return f"{key}: {err['msg']} (got {err['input']!r}){suffix}"


def _allowed_keys(loc: list[str], tree: dict) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        if part == "source" or part.startswith("sources["):
            node = tree.get("source", {}) if part == "source" else \
                tree["sources"][int(part[8:-1])]
            kind = node.get("kind", "synthetic") if isinstance(node, dict) else "synthetic"
            model = SOURCE_KINDS.get(kind, SyntheticSource)
            continue
        if part.isdigit() or part not in model.model_fields:
            continue
        ann = model.model_fields[part].annotation
        for candidate in (ann, *get_args(ann)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
    return list(model.model_fields)
