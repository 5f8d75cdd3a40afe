"""Home Assistant and MQTT with a model's own classes, against a real broker (Debian's mosquitto):
a two-class model published as one binary sensor with a device class, following the bottle on
bottle-detection.mp4; discovery that follows the model (a deploy while the consumer runs, a
consumer restarted after a deploy) and removes the entities of classes that are gone; the
retained state kept across a restart only for a class the new model has; a wrong `on` in one
line before anything starts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import jinja2
import pytest
import tomli_w

from pipeline.client.consumers.homeassistant import node_id
from pipeline.client.consumers.mqtt import host_name
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.mqtt_broker import Broker, Watcher
from tests.support.processes import MODEL_CORE, launch, pipeline_cmd
from tests.support.subset_model import subset_model

pytestmark = pytest.mark.timeout(300)

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
# bottle-detection.mp4: the bottle stands on the table from the first frame, is taken away at
# about frame 526 and is back at about 679 (with margins for another CPU's rounding: the state
# is ON before AWAY_FROM and after AWAY_TO, OFF between CLEARLY_AWAY).
AWAY_FROM, AWAY_TO = 430, 760
CLEARLY_AWAY = (580, 630)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Real classifiers with a few classes each, cut from the shipped model's head: the bottle
    scores as ImageNet's water bottle, the table as its dining table, the cup as its cup."""
    d = tmp_path_factory.mktemp("models")
    return {
        "two": subset_model(d / "bottle-or-table.onnx", {"bottle": [898], "table": [532]}),
        "three": subset_model(d / "flask-cup-table.onnx", {"flask": [898], "cup": [968], "table": [532]}),
        "moved": subset_model(d / "cup-or-bottle.onnx", {"cup": [968], "bottle": [898]}),
        "back": subset_model(d / "bottle-or-table-2.onnx", {"bottle": [898], "table": [532]}),
    }


def render(template: str, state: dict) -> str:
    """What Home Assistant shows for a state: the template rendered as it renders it (Jinja)."""
    return jinja2.Environment().from_string(template).render(value_json=state)


def configs_of(watcher: Watcher, prefix: str, after: float = 0.0) -> dict[str, bytes]:
    """The newest config per topic of the device of `prefix` on this host, sent after `after`."""
    node = node_id(host_name(), prefix)
    with watcher.cond:
        return {t: p for t, p, _, at in watcher.messages
                if at > after and t.split("/")[2:3] == [node] and t.endswith("/config")}


def entities(configs: dict[str, bytes]) -> dict[str, dict]:
    """object id -> config of the entities the configs describe (an empty config: none)."""
    return {t.split("/")[3]: json.loads(p) for t, p in configs.items() if p}


def messages_since(watcher: Watcher, topic: str, after: float) -> list[tuple[dict, float]]:
    with watcher.cond:
        return [(json.loads(p), at) for t, p, _, at in watcher.messages if t == topic and at > after]


def attach_mqtt(name: str, broker: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*ATTACH, "--name", name, "--consumer", "mqtt", "--broker", broker,
                             *args], cwd=ROOT, text=True, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=30)[1]
    assert proc.returncode == 0 and "Traceback" not in err, err
    return err


def deploy(name: str, model: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.deploy", "--name", name, str(model)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def test_a_two_class_model_is_one_binary_sensor_with_its_device_class_following_the_bottle(
        broker, models, tmp_path, clean_machine):
    """Every frame of the video once: Home Assistant gets exactly one binary sensor for the
    source, `presence`, whose template gives ON while the bottle stands there and OFF while it is
    away, at the frames the video shows it."""
    prefix = "haone"
    config = tmp_path / "one.toml"
    config.write_text(tomli_w.dumps({
        "name": "haone",
        "source": {"kind": "video", "path": str(need(BOTTLE)), "loop": False, "realtime": False,
                   "state": {"on": "bottle", "device_class": "presence", "window": 5}},
        "model": {"weights": str(models["two"]), "runtime": "onnxruntime"},
        "edges": {"frames": {"policy": "block"}, "tensors": {"policy": "block"}},
        "consumers": [{"kind": "mqtt", "broker": broker.url, "topic_prefix": prefix,
                       "discovery": True}]}))
    watcher = Watcher(broker.port, [(f"{prefix}/#", 1), ("homeassistant/#", 1)])
    try:
        p = subprocess.run(pipeline_cmd(str(config), "--quiet", "--set", MODEL_CORE), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        watcher.wait_for(lambda: watcher.on(f"{prefix}/availability")[-1:] == [b"offline"], 15,
                         "offline at the end of the stream")
    finally:
        watcher.close()
    found = entities(configs_of(watcher, prefix))
    binary = {obj: c for obj, c in found.items() if "payload_on" in c}
    assert list(binary) == ["video_on"], sorted(found)
    sensor = binary["video_on"]
    assert sensor["device_class"] == "presence" and sensor["name"] == "video bottle"
    assert sensor["device"]["model"] == "bottle-or-table"
    assert sensor["state_topic"] == f"{prefix}/video/state"

    # What Home Assistant shows at each event's frame, from the states as they were published.
    events = watcher.json_on(f"{prefix}/video/event")
    states = watcher.json_on(f"{prefix}/video/state")
    shown = [render(sensor["value_template"], s) for s in states]
    changes = [(e["frame"], "ON" if e["event"] == "start" and e["label"] == "bottle" else "OFF")
               for e in events if e["event"] == "start" or e["label"] == "bottle"]
    print(f"binary sensor changes (frame, value): {changes}")
    assert {s["label"] for s in states} <= {"bottle", "table", "none"}
    assert changes[0] == (changes[0][0], "ON") and changes[0][0] < 60
    assert shown[-1] == "ON" and "OFF" in shown

    def value_at(frame: int) -> str:
        return next((v for f, v in reversed(changes) if f <= frame), "OFF")

    assert all(value_at(f) == "ON" for f in range(changes[0][0], AWAY_FROM))
    assert all(value_at(f) == "OFF" for f in range(*CLEARLY_AWAY))
    assert all(value_at(f) == "ON" for f in range(AWAY_TO, 1189))


def still(folder: Path, frame: int) -> Path:
    """A folder with one frame of the bottle video: a scene that stays as it is."""
    folder.mkdir()
    video = cv2.VideoCapture(str(need(BOTTLE)))
    video.set(cv2.CAP_PROP_POS_FRAMES, frame)
    ok, image = video.read()
    video.release()
    assert ok
    cv2.imwrite(str(folder / f"frame{frame}.png"), image)
    return folder


def test_discovery_and_the_kept_state_follow_the_model(broker, models, tmp_path, clean_machine):
    """The bottle on the table, still, classified 10 times a second; watched: classes 0 and 1.
    A consumer restarted after a deploy removes the entities of the classes gone and ends the
    kept class the new model lacks (though the new class has its index); a deploy while it runs
    sends discovery again for the new classes and removes the one gone; a class kept from the
    model before, at another index in the new one, goes on as it was."""
    name, prefix = "hamodel", "hamodel"
    config = tmp_path / "model.toml"
    config.write_text(tomli_w.dumps({
        "name": name,
        "source": {"kind": "images", "id": "shelf", "path": str(still(tmp_path / "still", 300)), "loop": True,
                   "fps": 10.0, "state": {"watch": [0, 1], "window": 3}},
        "model": {"weights": str(models["three"]), "runtime": "onnxruntime"}}))
    pipeline = launch(pipeline_cmd(str(config), "--quiet", "--set", MODEL_CORE))
    watcher = Watcher(broker.port, [(f"{prefix}/#", 1), ("homeassistant/#", 1)])
    state_topic, event_topic = f"{prefix}/shelf/state", f"{prefix}/shelf/event"
    consumer = None

    def restart_consumer() -> float:
        nonlocal consumer
        if consumer is not None:
            stop(consumer)
        at = time.monotonic()
        consumer = attach_mqtt(name, broker.url, "--discovery", "--topic-prefix", prefix)
        return at

    def first_state(after: float, label: str) -> dict:
        return watcher.wait_for(lambda: [s for s, _ in messages_since(watcher, state_topic, after)
                                         if s["label"] == label], 60, f"the state {label}")[0]

    def retained() -> dict[str, dict]:
        """What a Home Assistant that starts now finds (5 configs are due each time: any more
        would come with them)."""
        late = Watcher(broker.port, "homeassistant/#")
        try:
            late.wait_for(lambda: len(configs_of(late, prefix)) >= 5, 10, "the retained configs")
            time.sleep(0.5)
            return entities(configs_of(late, prefix))
        finally:
            late.close()

    try:
        assert pipeline.poll() is None, pipeline.stderr.read()
        # The three-class model: flask (the bottle) and cup are watched.
        started = restart_consumer()
        kept = first_state(started, "flask")
        assert kept["index"] == 0
        assert sorted(retained()) == ["fps", "shelf_class", "shelf_is_cup", "shelf_is_flask",
                                      "shelf_probability"]

        # Another model deployed while the consumer is stopped; restarted, it finds the flask kept.
        stop(consumer)
        consumer = None
        deploy(name, models["two"])
        started = restart_consumer()
        state = first_state(started, "bottle")
        assert state["index"] == 0 and state["since"] > kept["since"]  # flask's index, not flask
        events = watcher.wait_for(lambda: messages_since(watcher, event_topic, started)[1:] and
                                  messages_since(watcher, event_topic, started), 10,
                                  "the events of the restart")
        assert [(e["event"], e["label"], e["since"]) for e, _ in events][:2] == [
            ("end", "flask", kept["since"]), ("start", "bottle", state["since"])]
        removed = {t.split("/")[3] for t, p in configs_of(watcher, prefix, started).items() if not p}
        assert removed == {"shelf_is_flask", "shelf_is_cup"}
        now = retained()
        assert sorted(now) == ["fps", "shelf_class", "shelf_is_bottle", "shelf_is_table",
                               "shelf_probability"]
        assert now["fps"]["device"]["model"] == "bottle-or-table"
        assert render(now["shelf_is_bottle"]["value_template"], state) == "ON"
        assert render(now["shelf_is_table"]["value_template"], state) == "OFF"

        # A deploy while the consumer runs: cup and bottle (at index 1 now) are watched.
        switched = time.monotonic()
        deploy(name, models["moved"])
        state = first_state(switched, "bottle")
        assert state["index"] == 1
        events = [e for e, _ in watcher.wait_for(
            lambda: messages_since(watcher, event_topic, switched)[1:] and
            messages_since(watcher, event_topic, switched), 10, "the events of the switch")]
        assert [(e["event"], e["label"], e["index"]) for e in events][:2] == [
            ("end", "bottle", 0), ("start", "bottle", 1)]  # a new model's state starts afresh
        removed = {t.split("/")[3] for t, p in configs_of(watcher, prefix, switched).items() if not p}
        assert removed == {"shelf_is_table"}
        now = retained()
        assert sorted(now) == ["fps", "shelf_class", "shelf_is_bottle", "shelf_is_cup",
                               "shelf_probability"]
        assert now["shelf_class"]["device"]["model"] == "cup-or-bottle"
        assert render(now["shelf_is_bottle"]["value_template"], state) == "ON"

        # Deployed while the consumer is stopped: bottle moves back to index 0. The kept bottle
        # goes on, with its `since` and no event.
        stop(consumer)
        consumer = None
        deploy(name, models["back"])
        started = restart_consumer()
        after = first_state(started, "bottle")
        assert after["index"] == 0 and after["since"] == state["since"]
        time.sleep(1.0)
        assert not messages_since(watcher, event_topic, started)
        removed = {t.split("/")[3] for t, p in configs_of(watcher, prefix, started).items() if not p}
        assert removed == {"shelf_is_cup"}
        assert sorted(retained()) == ["fps", "shelf_class", "shelf_is_bottle", "shelf_is_table",
                                      "shelf_probability"]
    finally:
        if consumer is not None:
            consumer.send_signal(signal.SIGINT)
            consumer.communicate(timeout=30)
        watcher.close()
        pipeline.send_signal(signal.SIGINT)
        pipeline.communicate(timeout=60)


@pytest.mark.parametrize("setting, message", [
    ('source.state.on="bottel"',
     "source.state.on: 'bottel' is not a class of bottle-or-table (its classes: 'bottle', 'table')"),
    ('source.state.watch=["table"]',
     "source.state.on: 'bottle' is not watched, so the state is never 'bottle'"),
    ('source.state.device_class="dor"',
     "source.state.device_class: 'dor' is not a Home Assistant binary sensor device class "
     "(closest: door;"),
])
def test_a_wrong_on_or_device_class_is_one_line_before_anything_starts(models, setting, message):
    base = [sys.executable, "-m", "pipeline.cli.up", str(ROOT / "configs" / "demo.toml"),
            "--set", f"model.weights={models['two']}", "--set", "model.runtime=onnxruntime",
            "--set", 'source.state.on="bottle"', "--set", setting]
    p = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    p = subprocess.run(base + ["--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and message in p.stdout + p.stderr
