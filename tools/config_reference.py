"""Write docs/configuration-reference.md from the config schema (pipeline/config/schema.py).

Every key of a topology file, with its type, allowed range, default and meaning, is read from the
pydantic models themselves: the meaning is the field's `description`, else the comment on its line
or the comment lines just above it in the schema's source. Run it after changing the schema:

    .venv/bin/python -m tools.config_reference           # rewrite the file
    .venv/bin/python -m tools.config_reference --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import inspect
import io
import sys
import tokenize
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from pipeline.config import schema

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "docs" / "configuration-reference.md"
COMMAND = ".venv/bin/python -m tools.config_reference"

HEADER = f"""# Configuration reference

<!-- Generated from pipeline/config/schema.py by `{COMMAND}`: do not edit by hand. -->

Every key of a topology file, read from the schema the file is validated against. Every key has
a default, so an empty file is a valid pipeline (the synthetic source); unknown keys and values of
the wrong type are errors, reported in one line naming the key. What the keys are for, and how they
combine: [configuration.md](configuration.md).
"""


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment of each field in the model's own source: the one on its line, else the comment
    lines just above it."""
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    inline: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            inline[tok.start[0]] = tok.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not line.startswith("    ") or line.startswith("     ") or ":" not in stripped:
            continue
        name = stripped.split(":", 1)[0]
        if not name.isidentifier() or name not in model.model_fields:
            continue
        text = inline.get(n) if not stripped.startswith("#") else None
        above: list[str] = []
        k = n - 1
        while k >= 1 and lines[k - 1].strip().startswith("#"):
            above.insert(0, lines[k - 1].strip().lstrip("#").strip())
            k -= 1
        parts = [" ".join(above)] if above else []
        parts += [text] if text else []
        if parts:
            found.setdefault(name, "; ".join(parts))
    return found


def _type(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is list:
        return f"list of {_type(args[0])}" if args else "list"
    if annotation is type(None):
        return "unset"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(annotation, str(annotation))


def _range(field) -> str:
    bits = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bits.append(f"{sign} {getattr(m, attr)}")
        if getattr(m, "pattern", None):
            bits.append(f"matches `{m.pattern}`")
    return ", ".join(bits)


def _toml(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, BaseModel):
        return "table"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(model: type[BaseModel], prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    comments = _comments(model)
    for base in model.__mro__[1:]:
        if isinstance(base, type) and issubclass(base, BaseModel) and base is not BaseModel:
            for name, text in _comments(base).items():
                comments.setdefault(name, text)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind = _type(field.annotation)
        limits = _range(field)
        if limits:
            kind += f" ({limits})"
        default = "required" if field.is_required() else f"`{_toml(field.get_default())}`"
        meaning = field.description or comments.get(name, "").replace("None:", "unset:")
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("consumers"):
            meaning = ", ".join(f"`{c}`" for c in extra["consumers"]) + ": " + meaning
        rows.append(f"| `{prefix}{name}` | {_cell(kind)} | {_cell(default)} | {_cell(meaning)} |")
    return rows


def _doc(model: type[BaseModel]) -> list[str]:
    doc = inspect.getdoc(model)
    if not doc or model.__doc__ is None or "__doc__" not in model.__dict__:
        return []
    return [" ".join(doc.split()), ""]


def render() -> str:
    """The reference, as it must be committed."""
    out = [HEADER]

    def section(title: str, model: type[BaseModel], prefix: str, intro: str = "",
                skip: tuple[str, ...] = ()) -> None:
        out.append(f"## {title}\n")
        if intro:
            out.append(intro + "\n")
        out.extend(_doc(model))
        out.extend(_table(model, prefix, skip))
        out.append("")

    section("Top level", schema.Config, "",
            "Sections are tables of their own (`[source]`, `[model]`, ...), listed below.",
            skip=tuple(n for n, f in schema.Config.model_fields.items() if n != "name"))
    out.append("## `[source]` and `[[sources]]`\n")
    out.append("One `[source]` table, or several `[[sources]]` tables that each take the same keys "
               "(each source then gets its own capture and preprocess processes and rings). "
               "`kind` selects the source; every kind takes the common keys, then its own.\n")
    base = schema._SourceBase
    kinds = typing.get_args(typing.get_args(schema.Source)[0])
    names = [typing.get_args(m.model_fields["kind"].annotation)[0] for m in kinds]
    default_kind = schema.Config.model_fields["source"].get_default().kind
    rows = _table(base, "source.")
    kind_type = _cell(" | ".join(f"`{_toml(n)}`" for n in names))
    rows.insert(2, f"| `source.kind` | {kind_type} | `{_toml(default_kind)}` | the kind of source; "
                   "each takes the keys of its section below |")
    out.extend(rows)
    out.append("")
    for model in kinds:
        kind = typing.get_args(model.model_fields["kind"].annotation)[0]
        out.append(f"### `kind = \"{kind}\"`\n")
        out.extend(_doc(model))
        out.extend(_table(model, "source.", skip=tuple(base.model_fields) + ("kind",)))
        out.append("")
    section("`[source.state]`", schema.StateConfig, "source.state.")
    section("`[source.lores]` (picamera2)", schema.LoresStream, "source.lores.")
    section("`[capture]`", schema.CaptureStage, "capture.")
    section("`[preprocess]`", schema.PreprocessStage, "preprocess.")
    section("`[inference]`", schema.InferenceStage, "inference.")
    section("`[model]`", schema.ModelConfig, "model.")
    section("`[edges]`", schema.Edges, "edges.", skip=("frames", "tensors"))
    section("`[edges.frames]` and `[edges.tensors]`", schema.Edge, "edges.frames.",
            "`edges.frames`: capture to preprocess (raw frames); `edges.tensors`: preprocess to "
            "inference (model inputs). Both take these keys; only `edges.frames` can cross hosts "
            "(`bind`, `connect`, `encoding`, `quality`).")
    section("`[supervision]`", schema.Supervision, "supervision.")
    section("`[adaptive]`", schema.AdaptiveConfig, "adaptive.")
    section("`[curve]`", schema.CurveConfig, "curve.")
    section("`[[consumers]]`", schema.ConsumerConfig, "consumers.",
            "Each `[[consumers]]` table is a consumer started and stopped with the pipeline. A key "
            "that names consumers (`mqtt`: ...) is for those built-in consumers only; the others "
            "are for any.")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
