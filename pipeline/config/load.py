"""Reading a config: the TOML file, `--set` overrides, paths made absolute, then validation."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .checks import check_files
from .errors import ConfigError, describe
from .schema import WEIGHTS_SPECIAL, Config
from .topology import auto_layout

# Keys whose values are file paths: relative to the config file when written there,
# relative to the working directory when given with --set.
PATH_KEYS = (("source", "path"), ("model", "weights"), ("model", "labels"), ("curve", "keys"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); a list entry is `sources[1].path` or `sources.1.path`,
    the value is read as TOML, else kept as a string."""
    key, sep, raw = text.partition("=")
    parts = re.sub(r"\[([0-9]+)\]", r".\1", key.strip()).split(".")
    if not sep or not all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in parts):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with KEY like source.path or "
                          "sources[0].path")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def _set(tree: dict, parts: list[str], value: Any, origin: str) -> None:
    """tree[a][b]... = value; a numeric part indexes a list (sources.1.path)."""
    node: Any = tree
    for i, part in enumerate(parts):
        where, last = ".".join(parts[:i]), i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"{origin}: give an entry of {where} (e.g. {where}[0].{part})")
            if int(part) >= len(node):
                raise ConfigError(f"{origin}: {where} has {len(node)} entries")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif last:
            node[part] = value
        elif parts[i + 1].isdigit() and not isinstance(node.get(part), list):
            hint = f" (this config has one [source]: use source.{'.'.join(parts[i + 2:])})" \
                if part == "sources" and "source" in tree else ""
            raise ConfigError(f"{origin}: {'.'.join(parts[:i + 1])} is not a list here, so it has "
                              f"no entry {parts[i + 1]}{hint}")
        else:
            node = node.setdefault(part, {})
        if not last and not isinstance(node, (dict, list)):
            raise ConfigError(f"{origin}: {'.'.join(parts[: i + 1])} is not a table")


def _resolve_path(tree: dict, base: Path) -> None:
    def resolve(table: Any, key: str) -> None:
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str) and value and value not in WEIGHTS_SPECIAL and value != "-":
            table[key] = os.path.normpath(base / os.path.expanduser(value))

    for section, key in PATH_KEYS:
        resolve(tree.get(section), key)
    consumers = tree.get("consumers")
    for consumer in consumers if isinstance(consumers, list) else []:
        for key in ("out", "ca", "dataset", "models"):
            resolve(consumer, key)
    sources = tree.get("sources")
    for src in sources if isinstance(sources, list) else []:
        resolve(src, "path")


def load_config(path: str | os.PathLike | None, overrides: list[str] = (),
                host: str | None = None, files: bool = True) -> Config:
    """Read, override and validate a topology; raises ConfigError with one readable line.
    With `host`, only what runs on that host must exist here (files, keys); `files=False`
    checks none of them (`check_files` does that on its own)."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                tree = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config path is a directory, not a TOML file: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        _resolve_path(tree, path.resolve().parent)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[-1] in ("path", "weights", "keys", "out", "ca") and isinstance(value, str) \
                and value and value not in WEIGHTS_SPECIAL and value != "-":
            value = os.path.normpath(Path.cwd() / os.path.expanduser(value))
        _set(tree, parts, value, f"--set {text}")
    return validate(tree, host, files)


def validate(tree: dict[str, Any], host: str | None = None, files: bool = True) -> Config:
    if "source" in tree and tree.get("sources"):
        raise ConfigError("sources: give either [source] or [[sources]], not both")
    if isinstance(tree.get("source"), dict):
        tree["source"].setdefault("kind", "synthetic")
    for src in tree.get("sources") or [] if isinstance(tree.get("sources"), list) else []:
        if isinstance(src, dict):
            src.setdefault("kind", "synthetic")
    try:
        config = Config.model_validate(tree)
        layout = auto_layout(config)
        if layout:  # validated again: the layout is then the config's own, as if written in it
            tree = {**tree, **{k: {**tree.get(k, {}), **v} for k, v in layout.items()}}
            config = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(describe(e, tree)) from None
    if host is not None and host not in config.hosts():
        raise ConfigError(f"--host {host}: no stage runs on it (hosts in this config: "
                          f"{', '.join(config.hosts())})")
    if files:
        check_files(config, host)
    return config
