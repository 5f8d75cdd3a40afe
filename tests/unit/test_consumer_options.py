"""Each consumer option is declared once (pipeline/config/consumers.py): pipeline-attach's
arguments, a config's `[[consumers]]` keys, the command line a consumer started with the pipeline
gets, and the consumers' own constructors agree on its name and default; a mistyped option or
consumer is one line naming the closest."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from pipeline.cli.attach import build_parser
from pipeline.cli.consumer_args import consumer_options
from pipeline.client.consumers import load, resolve
from pipeline.config import ConfigError, ConsumerConfig, validate
from pipeline.config.consumers import BUILTIN_CONSUMERS, default, flag_of, options, options_of, takers
from tests.support.assets import ROOT

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
ATTACH_OWN = {"help", "name", "list", "consumer", "format", "count", "duration", "max_age", "label"}
CUSTOM = "tools/examples/consumer.py:LabelCounter"
# A valid value other than the default for every option.
NON_DEFAULT = {
    "out": "/data/out", "fps": 12.5, "frames": True, "port": 9000, "host": "0.0.0.0",
    "allow_hosts": ["pi.lan", "pi"], "dataset": "/d", "review_below": 0.3, "token": "t" * 20,
    "models": "/m", "broker": "mqtts://broker.lan:8884", "topic_prefix": "site/shed",
    "client_id": "shed-1", "qos": 2, "discovery": True, "discovery_prefix": "ha", "snapshots": True,
    "stats_interval": 2.5, "ca": "/ca.pem", "quality": 70, "min_interval": 0.5,
    "min_difference": 0.2, "max_examples": 10, "verbose": True,
}


def test_pipeline_attach_has_each_option_of_the_schema_with_its_default():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    assert set(actions) - ATTACH_OWN == set(options())
    for name in options():
        assert actions[name].option_strings == [flag_of(name)], name
        assert actions[name].default == default(name), name
    given = consumer_options(parser.parse_args([]))
    assert given == ConsumerConfig(kind="print").model_dump(exclude={"kind"})


def test_the_options_of_one_consumer_are_in_its_group_of_the_help():
    groups = {g.title: {a.dest for a in g._group_actions} for g in build_parser()._action_groups}
    for kind in BUILTIN_CONSUMERS:
        own = {name for name in options() if takers(name) == (kind,)}
        titled = [dests for title, dests in groups.items() if title.startswith(f"{kind} consumer: ")]
        assert titled == ([own] if own else []), kind


@pytest.mark.parametrize("kind", list(BUILTIN_CONSUMERS))
def test_each_consumer_takes_the_options_declared_for_it_with_their_defaults(kind):
    """(`frames` is the subscription's: a built-in asks for frames itself.)"""
    parameters = inspect.signature(resolve(kind)).parameters
    taken = {name for name in parameters if name in options()}
    assert taken == set(options_of(kind)) - {"frames"}
    for name in taken:
        given = parameters[name].default
        assert (list(given) if isinstance(given, tuple) else given) == default(name), name


@pytest.mark.parametrize("kind", [*BUILTIN_CONSUMERS, CUSTOM])
def test_a_consumer_of_the_config_is_started_with_its_options(kind):
    assert set(NON_DEFAULT) == set(options())
    assert ConsumerConfig(kind=kind, out="/data/out").attach_args() == \
        ["--consumer", kind] + (["--out", "/data/out"] if "out" in options_of(kind) else [])
    config = ConsumerConfig(kind=kind, **NON_DEFAULT)
    args = build_parser().parse_args(["--name", "lab", *config.attach_args()])
    given = consumer_options(args)
    assert args.consumer == kind
    for name in options():
        assert given[name] == (getattr(config, name) if name in options_of(kind) else default(name)), name


def test_a_mistyped_option_is_one_line_naming_the_closest():
    done = subprocess.run([*ATTACH, "--consumer", "mqtt", "--brokr", "mqtt://pi.lan"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("pipeline-attach: unrecognized arguments: --brokr mqtt://pi.lan "
                           "(did you mean --broker?)\n")


def test_a_mistyped_consumer_is_one_line_naming_the_closest():
    done = subprocess.run([*ATTACH, "--consumer", "mqqt"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr == ("pipeline-attach: --consumer 'mqqt' is not print, jsonl, video, preview, "
                           "mqtt, collect or MODULE:NAME (did you mean mqtt?)\n")


@pytest.mark.parametrize("entry, said", [
    ({"kind": "mqtt", "brokr": "mqtt://pi.lan"}, ["brokr: unknown key", "broker"]),
    ({"kind": "previw"}, ["kind: 'previw' is not print", "(did you mean preview?)"]),
])
def test_a_mistyped_key_or_kind_in_consumers_is_one_line(entry, said):
    with pytest.raises(ConfigError) as e:
        validate({"consumers": [entry]}, files=False)
    message = str(e.value)
    assert "\n" not in message and all(words in message for words in said), message


def test_a_custom_class_is_given_the_options_its_constructor_names_or_lists(tmp_path):
    (tmp_path / "mine.py").write_text(
        "class Named:\n"
        "    def __init__(self, out=None, name=''):\n"
        "        self.out, self.name = out, name\n"
        "    def on_result(self, result):\n"
        "        pass\n"
        "class Listed:\n"
        "    OPTIONS = ('port',)\n"
        "    def __init__(self, **given):\n"
        "        self.given = given\n"
        "    def on_result(self, result):\n"
        "        pass\n")
    given = {**ConsumerConfig(kind="mine:Named", out="o.jsonl", port=9).model_dump(exclude={"kind"}),
             "name": "lab", "config": {}}
    named = load(f"{tmp_path}/mine.py:Named", **given)
    assert (named.out, named.name) == ("o.jsonl", "lab")
    assert load(f"{tmp_path}/mine.py:Listed", **given).given == {"port": 9}
