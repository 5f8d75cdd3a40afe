"""pipeline-attach's consumer options, made from their one declaration (the fields of
`ConsumerConfig`, pipeline/config/consumers.py): the names, defaults and help of a config's
`[[consumers]]` keys, spelled `--name-with-dashes`."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, NoReturn, get_args, get_origin

from pipeline.config.consumers import BUILTIN_CONSUMERS, ConsumerConfig, flag_of, metavar_of, options, takers


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (a mistyped option also gets the closest
    one), and exit code 2."""

    def error(self, message: str) -> NoReturn:
        words = message.split(": ", 1)[-1].split() if "unrecognized arguments" in message else []
        known = [s for action in self._actions for s in action.option_strings]
        close = next((c for w in words if w.startswith("--")
                      for c in difflib.get_close_matches(w.split("=")[0], known, n=1)), None)
        hint = f" (did you mean {close}?)" if close else " (see --help)"
        print(f"{self.prog}: {message}{hint}", file=sys.stderr)
        sys.exit(2)


def _argument(name: str) -> dict[str, Any]:
    """add_argument's keywords for option `name`, from its field."""
    field = ConsumerConfig.model_fields[name]
    kind = field.annotation
    help_text = field.description or ""
    if kind is bool:
        return {"action": "store_true", "help": help_text}
    if get_origin(kind) is list:
        return {"action": "append", "default": list(field.default), "metavar": metavar_of(name),
                "help": help_text}
    kind = next(a for a in (*get_args(kind), kind) if a is not type(None))  # `float | None`: float
    if field.default is not None:
        help_text += f" (default {field.default})"
    return {"type": kind, "default": field.default, "metavar": metavar_of(name), "help": help_text}


def add_consumer_options(parser: argparse.ArgumentParser) -> None:
    """Every consumer option: one of a single built-in consumer in that consumer's group, the
    others (of several consumers, or of any) among the general options."""
    groups: dict[str, Any] = {}
    for name in options():
        owners = takers(name)
        group: Any = parser
        if len(owners) == 1:
            owner = owners[0]
            if owner not in groups:
                groups[owner] = parser.add_argument_group(
                    f"{owner} consumer: {BUILTIN_CONSUMERS[owner].about}")
            group = groups[owner]
        group.add_argument(flag_of(name), dest=name, **_argument(name))


def consumer_options(args: argparse.Namespace) -> dict[str, Any]:
    """The consumer options given (or defaulted) on the command line, by name."""
    return {name: getattr(args, name) for name in options()}
