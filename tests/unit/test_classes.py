"""Class names people type: the shipped ImageNet groups and WordNet ids, looking a name up (a class,
an index, a group), the one line for a name that is neither, `on` against `watch`, a state that
is a group (votes, events, Home Assistant, the MQTT consumer's restart), and `pipeline-up
--list-classes` / `--list-groups`."""

from __future__ import annotations

import csv
import json
import re
import threading

import jinja2
import pytest

from pipeline.cli import up
from pipeline.client.consumers.homeassistant import discovery_configs
from pipeline.client.consumers.mqtt import MqttConsumer
from pipeline.client.result import Prediction, Result
from pipeline.client.states import State, StateMachine
from pipeline.config import Config, ConfigError, StateConfig, check_classes
from pipeline.config.classes import (
    GROUPS_FILE,
    class_indices,
    closest,
    groups_of_class,
    imagenet_classes,
    imagenet_groups,
    imagenet_wnids,
    resolve,
)
from tests.support.assets import IMAGES, ROOT, need

NAMES = imagenet_classes()
DOOR = ["open", "closed"]  # a model of one's own
GOLDEN, LABRADOR, BEAGLE, TABBY, SIAMESE = 207, 208, 162, 281, 284
SPORTS_CAR, FREIGHT_CAR, WATER_BOTTLE = 817, 565, 898


# -- the shipped data ------------------------------------------------------------------------

def test_the_wnids_are_imagenets_sorted_order():
    """torchvision's index i is the i-th of the sorted wnids: the 1000 strictly increase."""
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and wnids[898] == "n04557648"
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert all(a < b for a, b in zip(wnids, wnids[1:]))


def test_the_wnids_agree_with_the_labelled_photos():
    labels = need(IMAGES / "labels.csv")
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 200
    assert all(imagenet_wnids()[int(r["class_index"])] == r["wnid"] for r in rows)


def test_dog_is_the_118_breeds_and_every_group_is_sound():
    groups = imagenet_groups()
    assert groups["dog"] == tuple(range(151, 269))
    assert len(groups["cat"]) == 7 and {TABBY, SIAMESE} <= set(groups["cat"])
    assert groups["bottle"] == (440, 720, 737, WATER_BOTTLE, 899, 901, 907)
    assert {"bird", "fish", "snake", "car", "vehicle", "boat", "aircraft", "monkey", "insect",
            "ball", "chair"} <= set(groups)
    lowered = {n.lower() for n in NAMES}
    for name, members in groups.items():
        assert name not in lowered and len(members) >= 2, name
        assert list(members) == sorted(set(members)) and 0 <= members[0] and members[-1] < 1000
    data = json.loads(GROUPS_FILE.read_text())
    assert data["groups"]["dog"]["wnid"] == "n02084071"
    assert "person" not in groups and data["people"]["classes"] == [981, 982, 983]
    assert groups_of_class()[GOLDEN][-1] == "dog" and groups_of_class()[0] == ("animal", "fish")


def test_the_data_file_is_what_the_tool_derives_from_wordnet():
    """Where WordNet 3.0 is installed (Debian's wordnet-base), the shipped file is regenerated
    and compared."""
    import importlib.util
    from pathlib import Path

    if not Path("/usr/share/wordnet/data.noun").exists():
        pytest.skip("no WordNet 3.0 here (apt-get install wordnet-base)")
    spec = importlib.util.spec_from_file_location("imagenet_groups", ROOT / "tools" / "imagenet_groups.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--check"]) == 0


# -- looking a name up -----------------------------------------------------------------------

@pytest.mark.parametrize("item, name, indices, group", [
    ("dog", "dog", tuple(range(151, 269)), True),
    (" Dog ", "dog", tuple(range(151, 269)), True),
    ("big  Cat", "big cat", (288, 289, 290, 291, 292, 293), True),
    ("Water Bottle", "water bottle", (WATER_BOTTLE,), False),
    (WATER_BOTTLE, "water bottle", (WATER_BOTTLE,), False),
    ("crane", "crane", (517,), False),  # a class name: never a group
])
def test_a_name_is_a_class_an_index_or_a_group(item, name, indices, group):
    w = resolve(item, "k", NAMES, "mobilenet_v2")
    assert (w.name, w.indices, w.group) == (name, indices, group)
    assert class_indices(item, "k", NAMES, "m") == list(indices)
    assert StateConfig(watch=["bottle", 3]).watch_indices(NAMES, "m") == {3, 440, 720, 737, 898,
                                                                           899, 901, 907}


def test_groups_are_imagenets_only():
    with pytest.raises(ValueError) as e:
        resolve("dog", "source.state.watch", DOOR, "door")
    assert str(e.value) == ("source.state.watch: 'dog' is not a class of door "
                            "(its classes: 'open', 'closed')")


def message(item: str | int, names=NAMES) -> str:
    with pytest.raises(ValueError) as e:
        resolve(item, "source.state.watch", names, "mobilenet_v2")
    return str(e.value)


def test_the_closest_names_are_groups_then_whole_words_then_spelled_alike():
    assert message("bottles") == (
        "source.state.watch: 'bottles' is not an ImageNet class or group (closest: 'bottle' (a "
        "group of 7 classes), 'beer bottle', 'pill bottle', 'pop bottle', 'water bottle', 'wine "
        "bottle', 'bottlecap', 'box turtle'; pipeline-up --list-classes lists them all)")
    assert message("dogs").startswith(
        "source.state.watch: 'dogs' is not an ImageNet class or group (closest: 'dog' (a group of "
        "118 classes), 'Maltese dog', ")
    # Classes it names first ('a sports car is a car'), then those it only qualifies.
    hints = closest("cars", NAMES)
    assert hints[:4] == ["'car' (a group of 10 classes)", "'freight car'", "'passenger car'",
                         "'sports car'"]
    assert hints.index("'sports car'") < hints.index("'car mirror'")
    assert message("water botle").startswith(
        "source.state.watch: 'water botle' is not an ImageNet class or group (closest: 'water "
        "bottle', 'wine bottle'")


@pytest.mark.parametrize("typed, first", [
    ("taxi", "'cab'"), ("cows", "'ox'"), ("horse", "'sorrel'"), ("sofa", "'studio couch'"),
    ("automobile", "'car' (a group of 10 classes)"), ("phone", "'telephone' (a group of 3 classes)"),
    ("butterflies", "'butterfly' (a group of 6 classes)"),
])
def test_wordnet_synonyms_are_proposed_not_taken(typed, first):
    assert message(typed).split("(closest: ")[1].startswith(first)


@pytest.mark.parametrize("typed", ["person", "People", "pedestrians", "woman"])
def test_people_get_told_plainly_there_is_no_such_class(typed):
    text = message(typed)
    assert text.startswith(f"source.state.watch: {typed!r} is not an ImageNet class or group: "
                           "ImageNet has no class for people (its only classes of people are "
                           "'ballplayer', 'groom', 'scuba diver'), and a classifier of the whole "
                           "frame is not a person detector")
    assert "source.roi" in text and "pipeline-train" in text


def test_a_name_nothing_resembles_says_how_to_list_them():
    assert message("xqzv") == ("source.state.watch: 'xqzv' is not an ImageNet class or group (give "
                               "a class name or an index 0-999; pipeline-up --list-classes lists "
                               "them all)")
    assert message(1000) == "source.state.watch: class index 1000 is not an ImageNet class (0 to 999)"


def state_config(**state) -> Config:
    return Config.model_validate({"name": "t", "source": {"kind": "synthetic", "state": state}})


@pytest.mark.parametrize("state, error", [
    ({"watch": ["dog"], "on": "dog"}, None),
    ({"watch": ["dog", "beagle"], "on": "beagle"}, None),
    ({"watch": ["beagle"], "on": "beagle"}, None),
    ({"on": "beagle"}, None),
    ({"watch": ["cat"], "on": "dog"},
     "source.state.on: 'dog' is a group, and the state is a group only while it is watched, so the "
     "state is never 'dog' (add 'dog' to source.state.watch)"),
    ({"on": "dog"}, "source.state.on: 'dog' is a group, and the state is a group only while it is "
                    "watched, so the state is never 'dog' (add 'dog' to source.state.watch)"),
    ({"watch": ["dog"], "on": "beagle"},
     "source.state.on: 'beagle' is in the watched group 'dog', whose classes vote as the group, so "
     "the state is never 'beagle' (set `on = 'dog'`, or add 'beagle' itself to source.state.watch)"),
    ({"watch": ["cat"], "on": "beagle"},
     "source.state.on: 'beagle' is not watched, so the state is never 'beagle' (add it to "
     "source.state.watch, or leave `watch` empty)"),
    ({"watch": ["dogs"]}, "source.state.watch: 'dogs' is not an ImageNet class or group (closest: "
                          "'dog' (a group of 118 classes)"),
])
def test_on_is_a_state_the_source_can_be_in(state, error):
    config = state_config(**state)
    if error is None:
        check_classes(config, NAMES, "mobilenet_v2")
        return
    with pytest.raises(ConfigError) as e:
        check_classes(config, NAMES, "mobilenet_v2")
    assert str(e.value).startswith(error)


# -- a state that is a group -----------------------------------------------------------------

def result(seq: int, *top: tuple[int, float], labels: list[str] | tuple[str, ...] = NAMES,
           model_id: str = "a") -> Result:
    return Result(pipeline="p", seq=seq, result_seq=seq, source="s", frame_index=seq, item=None,
                  captured_at=1e9 + seq, latency_ms=1.0, model="m",
                  top=[Prediction(i, labels[i], p) for i, p in top], timestamps={},
                  model_id=model_id)


def votes(machine: StateMachine, *tops: tuple[tuple[int, float], ...]) -> list:
    return [machine.vote(result(seq, *top))[:2] for seq, top in enumerate(tops, 1)]


def test_a_groups_classes_vote_together_with_their_summed_probability():
    machine = StateMachine("s", StateConfig(watch=["dog", "cat"], min_prob=0.5))
    assert votes(machine,
                 ((TABBY, 0.3), (GOLDEN, 0.25), (LABRADOR, 0.2)),  # no breed is first: dog 0.45
                 ((GOLDEN, 0.3), (LABRADOR, 0.25), (TABBY, 0.2)),  # dog 0.55
                 ((TABBY, 0.35), (SIAMESE, 0.3)),                  # cat 0.65
                 ((WATER_BOTTLE, 0.9), (GOLDEN, 0.05))) == [
        (None, None), ("dog", pytest.approx(0.55)), ("cat", pytest.approx(0.65)), (None, None)]


def test_a_class_watched_by_itself_votes_as_itself_and_the_smallest_group_wins():
    machine = StateMachine("s", StateConfig(watch=["dog", "beagle"]))
    assert votes(machine, ((BEAGLE, 0.4), (GOLDEN, 0.3), (LABRADOR, 0.2)),
                 ((BEAGLE, 0.6), (GOLDEN, 0.3))) == [("dog", pytest.approx(0.5)), (BEAGLE, 0.6)]
    machine = StateMachine("s", StateConfig(watch=["vehicle", "car"]))
    assert votes(machine, ((SPORTS_CAR, 0.6),), ((FREIGHT_CAR, 0.6),)) == [("car", 0.6),
                                                                           ("vehicle", 0.6)]


def test_another_models_class_at_a_groups_index_is_not_in_the_group():
    machine = StateMachine("s", StateConfig(watch=["dog"]))
    own = [f"class {i}" for i in range(1000)]
    assert machine.vote(result(1, (GOLDEN, 0.9), labels=own)) == (None, None, None)


def test_the_state_and_its_events_name_the_group():
    machine = StateMachine("cam", StateConfig(watch=["dog"], min_prob=0.5, window=2))
    events = machine.update(result(1, (GOLDEN, 0.6)))
    events += machine.update(result(2, (LABRADOR, 0.5), (GOLDEN, 0.4)))
    state = machine.state
    assert (state.label, state.group, state.index, state.key) == ("dog", "dog", LABRADOR, "dog")
    assert state.probability == pytest.approx(0.9)
    assert state.to_dict() == {"label": "dog", "index": LABRADOR, "group": "dog",
                               "probability": 0.9, "since": 1e9 + 2}
    (start,) = events
    assert start.to_dict()["group"] == "dog" and (start.label, start.index) == ("dog", LABRADOR)
    # Another breed on top does not change the state; the index follows the newest vote.
    assert machine.update(result(3, (BEAGLE, 0.8))) == [] and machine.state.index == BEAGLE
    machine.update(result(4, (WATER_BOTTLE, 0.9)))
    end, = machine.update(result(5, (WATER_BOTTLE, 0.9)))
    assert (end.event, end.label, end.group, end.index) == ("end", "dog", "dog", BEAGLE)
    assert machine.state.label == "none" and "group" not in machine.state.to_dict()


def test_a_class_state_carries_no_group():
    machine = StateMachine("cam", StateConfig(watch=["water bottle"], window=1))
    (start,) = machine.update(result(1, (WATER_BOTTLE, 0.9)))
    assert "group" not in start.to_dict() and machine.state.key == WATER_BOTTLE


# -- Home Assistant and the MQTT consumer ----------------------------------------------------

def render(template: str, state: dict) -> str:
    return jinja2.Environment().from_string(template).render(value_json=state)


def binary_sensors(state: StateConfig) -> dict[str, dict]:
    configs = discovery_configs(pipeline="p", prefix="x", sources={"cam": state}, model="m",
                                snapshots=False, host="h")
    return {t.split("/")[3]: c for t, c in configs if t.split("/")[1] == "binary_sensor"}


def test_a_watched_group_is_one_binary_sensor_on_while_the_state_is_the_group():
    sensors = binary_sensors(StateConfig(watch=["dog", "beagle"]))
    assert set(sensors) == {"cam_group_dog", f"cam_{BEAGLE}"}
    dog = sensors["cam_group_dog"]
    assert dog["name"] == "cam dog"
    assert render(dog["value_template"], {"label": "dog", "index": GOLDEN, "group": "dog"}) == "ON"
    assert render(dog["value_template"], {"label": "beagle", "index": BEAGLE}) == "OFF"
    assert render(dog["value_template"], {"label": "none", "index": None}) == "OFF"
    on = binary_sensors(StateConfig(watch=["dog"], on="dog"))["cam_on"]
    assert render(on["value_template"], {"label": "dog", "index": GOLDEN, "group": "dog"}) == "ON"
    assert render(on["value_template"], {"label": "none", "index": None}) == "OFF"


def test_a_restarted_mqtt_consumer_keeps_a_group_state_whichever_class_leads():
    consumer = object.__new__(MqttConsumer)  # only what _same_class reads
    consumer.lock, consumer.labels = threading.Lock(), None
    dog = State(LABRADOR, "dog", 0.9, 1e9, "dog")
    assert consumer._same_class({"label": "dog", "index": GOLDEN, "group": "dog", "since": 1.0}, dog)
    assert not consumer._same_class({"label": "golden retriever", "index": GOLDEN, "since": 1.0}, dog)
    assert not consumer._same_class({"label": "dog", "index": LABRADOR, "group": "dog", "since": 1.0},
                                    State(LABRADOR, "Labrador retriever", 0.9, 1e9))


# -- pipeline-up --list-classes, --list-groups ------------------------------------------------

def run_up(capsys, *argv: str) -> tuple[int, str, str]:
    code = up.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_classes_prints_every_name_with_its_groups(capsys):
    code, out, _ = run_up(capsys, "--list-classes")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 1001 and lines[0].startswith("# mobilenet_v2: 1000 ImageNet")
    assert lines[1 + GOLDEN].split() == ["207", "golden", "retriever", "dog,", "mammal,", "animal"]
    assert lines[1 + 934].split() == ["934", "hotdog"]


def test_list_classes_with_a_word_lists_a_groups_classes_and_names_that_have_it(capsys):
    code, out, _ = run_up(capsys, "--list-classes", "bottle")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "440", "455", "720", "737", "898", "899", "901", "907"]  # bottlecap by its name
    code, out, _ = run_up(capsys, "--list-classes", "dog")
    assert len(out.splitlines()) == 1 + 118 + 3  # the breeds, hotdog, dogsled, African hunting dog
    code, out, err = run_up(capsys, "--list-classes", "dgo")
    assert code == 1 and out == "" and err.startswith("pipeline-up: --list-classes dgo: no class")


def test_list_groups_prints_each_group_with_its_synset(capsys):
    code, out, _ = run_up(capsys, "--list-groups")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert code == 0 and len(rows) == len(imagenet_groups())
    assert rows["dog"].split()[1:4] == ["118", "n02084071", "dog,"]


def test_list_classes_shows_the_configured_models_own_labels(capsys, tmp_path):
    labels = tmp_path / "door.txt"
    labels.write_text("open\nclosed\n")
    config = str(ROOT / "configs" / "demo.toml")
    code, out, _ = run_up(capsys, config, "--set", f"model.labels={labels}", "--list-classes")
    assert code == 0 and out.splitlines()[1:] == ["0  open", "1  closed"]
    code, out, _ = run_up(capsys, "--list-classes", config)  # the config after the flag
    assert code == 0 and len(out.splitlines()) == 1001
    code, _, err = run_up(capsys, config, "--set", f"model.labels={labels}", "--list-groups")
    assert code == 1 and "groups are of ImageNet's classes" in err
