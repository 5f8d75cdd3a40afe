"""The mqtt consumer against a real broker (Debian's mosquitto on a loopback port): availability
and its last will, states and events on bottle-detection.mp4, snapshots, stats, Home Assistant
discovery, reconnecting after the broker restarts, credentials and TLS, and the state events in
the jsonl consumer and the Python API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import tomli_w

from pipeline import attach
from pipeline.client.consumers.homeassistant import discovery_configs
from pipeline.client.consumers.mqtt import host_name
from pipeline.client.result import Result
from pipeline.client.states import StateMachine
from pipeline.config import StateConfig
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.mqtt_broker import Broker, Watcher
from tests.support.processes import launch, pipeline_cmd, read_jsonl

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
WATER_BOTTLE = 898
STATE = {"watch": ["water bottle"], "min_prob": 0.3, "window": 5}


def write_config(path: Path, name: str, *, fast: bool, consumers: list[dict] = (),
                 state: dict | None = STATE, fps: float = 0.0) -> Path:
    """bottle-detection.mp4 with the shipped model in onnxruntime: `fast` classifies every
    frame once, as fast as it goes; otherwise it plays in a loop at `fps` (0: its own 30 fps)."""
    source = {"kind": "video", "path": str(need(BOTTLE)), "loop": not fast, "realtime": not fast,
              "fps": fps}
    if state is not None:
        source["state"] = state
    config = {"name": name, "source": source, "model": {"runtime": "onnxruntime"},
              "consumers": list(consumers)}
    if fast:
        config["edges"] = {"frames": {"policy": "block"}, "tensors": {"policy": "block"}}
    path.write_text(tomli_w.dumps(config))
    return path


def start(config: Path, *args: str, **popen) -> subprocess.Popen:
    return launch(pipeline_cmd(str(config), "--quiet", *args), **popen)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return err


def attach_mqtt(name: str, broker: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([*ATTACH, "--name", name, "--consumer", "mqtt", "--broker", broker,
                             *args], cwd=ROOT, text=True, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    return proc


def events_of(messages: list[dict]) -> list[tuple[str, int, int]]:
    return [(e["event"], e["index"], e["frame"]) for e in messages]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The bottle video looping at 30 fps, watched for water bottles, shared by tests."""
    proc = start(write_config(tmp_path_factory.mktemp("live") / "live.toml", "mqttlive",
                              fast=False))
    yield proc
    stop(proc)


def test_states_events_snapshots_and_stats_of_the_whole_bottle_video(broker, tmp_path,
                                                                      clean_machine):
    """Every frame once; the supervised mqtt and jsonl consumers see the same state changes,
    and they are the ones the recorded results give; smoothing removed flickers."""
    events_file, record = tmp_path / "events.jsonl", tmp_path / "record.jsonl"
    config = write_config(tmp_path / "bottle.toml", "mqttbottle", fast=True, consumers=[
        {"kind": "mqtt", "broker": broker.url, "snapshots": True, "stats_interval": 1.0},
        {"kind": "jsonl", "out": str(events_file)}])
    prefix = f"edge-pipeline/{host_name()}/mqttbottle"
    watcher = Watcher(broker.port, f"{prefix}/#")
    try:
        p = subprocess.run(pipeline_cmd(str(config), "--quiet", "--record", str(record)),
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        watcher.wait_for(lambda: watcher.on(f"{prefix}/availability")[-1:] == [b"offline"], 15,
                         "offline at the end of the stream")
    finally:
        watcher.close()
    assert watcher.on(f"{prefix}/availability")[0] == b"online"
    events = watcher.json_on(f"{prefix}/video/event")
    assert {"event", "source", "index", "label", "probability", "time", "frame", "seq",
            "since"} <= set(events[0])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds == ["start", "end"] * (len(kinds) // 2) + \
        ["start"] * (len(kinds) % 2)  # one watched class: on, off, on...
    assert all(e["index"] == WATER_BOTTLE and e["label"] == "water bottle" for e in events)
    assert events[0]["frame"] < 30  # the bottle is there from the first frame
    # It is taken away around frame 520 and back around frame 680.
    assert any(e["event"] == "end" and 400 < e["frame"] < 650 for e in events)
    assert any(e["event"] == "start" and e["frame"] > 600 for e in events)
    final = watcher.json_on(f"{prefix}/video/state")[-1]
    assert final["label"] == "water bottle" and final["index"] == WATER_BOTTLE
    assert 0.3 <= final["probability"] <= 1 and final["since"] == events[-1]["time"]
    changes = len({e["seq"] for e in events})
    snapshots = watcher.on(f"{prefix}/video/snapshot")
    assert 1 <= len(snapshots) <= changes
    frame = cv2.imdecode(np.frombuffer(snapshots[0], np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (360, 640, 3)
    stats = watcher.json_on(f"{prefix}/stats")
    assert stats and stats[-1]["fps"] > 0 and stats[-1]["mqtt"]["published"] > 0

    # The jsonl consumer writes the same events after the results that caused them.
    lines = read_jsonl(events_file)
    jsonl_events = [x for x in lines if x["type"] == "event"]
    assert events_of(jsonl_events) == events_of(events)
    assert lines.index(jsonl_events[0]) > 0 and lines[lines.index(jsonl_events[0]) - 1][
        "seq"] == jsonl_events[0]["seq"]
    # ... which are the state machine's on the recorded results, in frame order.
    results = sorted(read_jsonl(record), key=lambda r: r["seq"])
    assert len(results) == 1189
    replay = StateMachine("video", StateConfig(**STATE))
    replayed = [e for r in results for e in replay.update(Result.from_message(r))]
    assert events_of([e.to_dict() for e in replayed]) == events_of(events)
    unsmoothed = StateMachine("video", StateConfig(**{**STATE, "window": 1}))
    flickers = [e for r in results for e in unsmoothed.update(Result.from_message(r))]
    assert len(flickers) > len(replayed)
    print(f"events on bottle-detection.mp4: {len(flickers)} without smoothing, "
          f"{len(replayed)} with 5 in a row")


def test_discovery_payloads_and_rediscovery_when_home_assistant_comes_online(broker, live):
    prefix = "site/shed"
    watcher = Watcher(broker.port, "homeassistant/#")
    consumer = attach_mqtt("mqttlive", broker.url, "--discovery", "--snapshots",
                           "--topic-prefix", prefix)
    try:
        watcher.wait_for(lambda: len(watcher.messages) >= 5, 30, "5 discovery configs")
        configs = watcher.messages[:5]
        by_topic = {t: json.loads(p) for t, p, _, _ in configs}
        assert all(t.endswith("/config") for t in by_topic)
        late = Watcher(broker.port, "homeassistant/#")  # a Home Assistant that starts later
        late.wait_for(lambda: len(late.messages) >= 5, 10, "the retained configs")
        late.close()
        assert {t for t, _, retain, _ in late.messages if retain} == set(by_topic)
        components = sorted(t.split("/")[1] for t in by_topic)
        assert components == ["binary_sensor", "image", "sensor", "sensor", "sensor"]
        for topic, payload in by_topic.items():
            assert {"unique_id", "name", "device", "availability_topic"} <= set(payload)
            assert payload["availability_topic"] == f"{prefix}/availability"
            assert payload["device"]["identifiers"] and payload["device"]["model"] == "mobilenet_v2"
            assert re.match(rf"homeassistant/{topic.split('/')[1]}/site_shed_[0-9a-f]{{8}}/", topic)
        assert len({p["unique_id"] for p in by_topic.values()}) == 5
        binary = next(p for t, p in by_topic.items() if "/binary_sensor/" in t)
        assert binary["state_topic"] == f"{prefix}/video/state"
        assert "== 898" in binary["value_template"] and binary["name"] == "video water bottle"
        image = next(p for t, p in by_topic.items() if "/image/" in t)
        assert image["image_topic"] == f"{prefix}/video/snapshot"
        # Home Assistant restarted: it says so, and gets every config again.
        count = len(watcher.messages)
        watcher.publish("homeassistant/status", "online")
        watcher.wait_for(lambda: len(watcher.messages) >= count + 6, 15, "the configs again")
        again = {t for t, _, _, _ in watcher.messages[count:]}
        assert set(by_topic) <= again
    finally:
        consumer.send_signal(signal.SIGINT)
        _, err = consumer.communicate(timeout=15)
        watcher.close()
    assert consumer.returncode == 0, err
    assert "0 dropped" in err


def test_reconnects_after_the_broker_restarts_and_publishes_the_newest_state(tmp_path, live):
    """One consumer refreshes nothing for an hour: after the restart its state can only come
    from the reconnect. The other sends stats each second: those of the outage are counted."""
    broker = Broker(tmp_path / "restarting")
    quiet = attach_mqtt("mqttlive", broker.url, "--stats-interval", "3600", "--topic-prefix", "quiet")
    chatty = attach_mqtt("mqttlive", broker.url, "--stats-interval", "1", "--topic-prefix", "chatty")
    try:
        watcher = Watcher(broker.port)
        for prefix in ("quiet", "chatty"):
            watcher.wait_for(lambda: watcher.on(f"{prefix}/video/state"), 20, f"{prefix}'s state")
        watcher.close()
        broker.stop()  # retained messages go with it (no persistence)
        time.sleep(3)  # results go on; stats are dropped and counted
        broker.start()
        t0 = time.monotonic()
        watcher = Watcher(broker.port)
        watcher.wait_for(lambda: watcher.on("quiet/availability") == [b"online"], 45, "online again")
        state = watcher.wait_for(lambda: watcher.json_on("quiet/video/state"), 5, "the state again")
        print(f"back {time.monotonic() - t0:.1f} s after the broker restarted")
        assert state[0]["label"] in ("water bottle", "none") and state[0]["since"] > 0
        stats = watcher.wait_for(lambda: watcher.json_on("chatty/stats"), 45, "stats")
        assert stats[-1]["mqtt"]["connects"] == 2 and stats[-1]["mqtt"]["dropped_by_kind"]["stats"] > 0
        watcher.close()
    finally:
        errs = []
        for consumer in (quiet, chatty):
            consumer.send_signal(signal.SIGINT)
            errs.append(consumer.communicate(timeout=15)[1])
        broker.stop()
    for err in errs:
        assert "lost the broker" in err and "reconnected" in err and quiet.returncode == 0, err


def test_credentials_come_from_the_environment(tmp_path, live):
    broker = Broker(tmp_path / "auth", passwords={"shed": "s3cret"})
    try:
        ok = attach_mqtt("mqttlive", broker.url, "--duration", "3",
                         env={"MQTT_USERNAME": "shed", "MQTT_PASSWORD": "s3cret"})
        _, err = ok.communicate(timeout=30)
        assert ok.returncode == 0 and "publishing to" in err, err
        bad = attach_mqtt("mqttlive", broker.url, "--duration", "3",
                          env={"MQTT_USERNAME": "shed", "MQTT_PASSWORD": "wrong"})
        _, err = bad.communicate(timeout=30)
        assert bad.returncode == 2, err
        assert err.strip().splitlines()[-1].startswith("pipeline-attach: the broker at ")
        assert "refused" in err and "Traceback" not in err
    finally:
        broker.stop()
    in_url = subprocess.run([*ATTACH, "--name", "mqttlive", "--consumer", "mqtt", "--broker",
                             "mqtt://shed:s3cret@127.0.0.1:1"], capture_output=True, text=True,
                            cwd=ROOT, timeout=30)
    assert in_url.returncode == 2 and "MQTT_USERNAME" in in_url.stderr
    assert len(in_url.stderr.strip().splitlines()) == 1


def test_mqtts_with_the_brokers_certificate_authority(tmp_path, live):
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=edge-test-ca", "-keyout", str(tmp_path / "ca.key"),
                    "-out", str(ca)], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(tmp_path / "server.csr")], check=True,
                   capture_output=True)
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(tmp_path / "server.csr"), "-CA", str(ca),
                    "-CAkey", str(tmp_path / "ca.key"), "-CAcreateserial", "-days", "1",
                    "-extfile", str(tmp_path / "ext"), "-out", str(cert)], check=True,
                   capture_output=True)
    broker = Broker(tmp_path / "tls", tls=(ca, cert, key))
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        ok = attach_mqtt("mqttlive", url, "--ca", str(ca), "--duration", "3")
        _, err = ok.communicate(timeout=30)
        assert ok.returncode == 0 and "publishing to" in err, err
        # Without the CA the broker's certificate is not trusted: never published to.
        untrusted = attach_mqtt("mqttlive", url, "--duration", "4", "--stats-interval", "1")
        _, err = untrusted.communicate(timeout=30)
        assert "cannot reach the broker" in err and "0 messages published" in err
        assert f"127.0.0.1:{broker.port} yet: its TLS certificate is not trusted (" in err, err
        assert int(re.search(r"(\d+) dropped", err)[1]) > 0  # its stats, counted
    finally:
        broker.stop()


def test_python_api_gives_each_result_its_state_events(tmp_path, clean_machine):
    """attach(states=True) runs the state machine on the results it delivers. The video plays at
    three times its rate (a pass in 13 s), so that the bottle is taken away within seconds."""
    proc = start(write_config(tmp_path / "api.toml", "mqttapi", fast=False, fps=90))
    events, states = [], set()
    try:
        with attach("mqttapi", states=True) as sub:
            deadline = time.monotonic() + 60
            for r in sub:
                events += r.events
                states.add(sub.states.state("video").label)
                if time.monotonic() > deadline or (events and len(states) > 1 and len(events) >= 2):
                    break
    finally:
        err = stop(proc)
    assert proc.returncode == 0, err
    assert events, "no state change in 60 s of a video that changes state twice in 13 s"
    assert all(e.index == WATER_BOTTLE and e.source == "video" for e in events)
    assert [e.event for e in events][:2] in (["start", "end"], ["end", "start"], ["start"])


@pytest.mark.parametrize("kill", ["everything", "supervisor"])
def test_offline_when_the_pipeline_is_killed(broker, tmp_path, kill, clean_machine):
    """SIGKILL of every process: the broker's last will says offline. SIGKILL of the
    supervisor alone: the consumer sees the pipeline gone and says offline itself."""
    name = f"mqttkill{kill[:3]}"
    config = write_config(tmp_path / "kill.toml", name, fast=False,
                          consumers=[{"kind": "mqtt", "broker": broker.url}])
    watcher = Watcher(broker.port, f"edge-pipeline/{host_name()}/{name}/#")
    proc = start(config, start_new_session=True)
    try:
        topic = f"edge-pipeline/{host_name()}/{name}/availability"
        watcher.wait_for(lambda: watcher.on(topic)[-1:] == [b"online"], 30, "online")
        os.killpg(proc.pid, signal.SIGKILL) if kill == "everything" else proc.kill()
        proc.wait(10)
        t0 = time.monotonic()
        watcher.wait_for(lambda: watcher.on(topic)[-1:] == [b"offline"], 30, "offline")
        print(f"offline {time.monotonic() - t0:.2f} s after SIGKILL of {kill}")
    finally:
        watcher.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        time.sleep(1)  # the stages follow their supervisor (parent-death signal)
        subprocess.run([sys.executable, "-m", "pipeline.cli.clean"], cwd=ROOT,
                       capture_output=True, timeout=30)


def test_a_restarted_consumer_changes_nothing_a_user_sees(broker, live):
    """Stopped and started again, the consumer publishes no state before its state machine has
    decided, and then the same state with the same `since` and no event: the broker's retained
    state stays what it was throughout. A reference consumer that stays attached tells whether
    the video itself changed state meanwhile (then the next restart is the test)."""
    watcher = Watcher(broker.port, [("restart/#", 1), ("ref/#", 1)])
    ref = attach_mqtt("mqttlive", broker.url, "--topic-prefix", "ref")
    consumer = attach_mqtt("mqttlive", broker.url, "--topic-prefix", "restart")
    errs = []
    try:
        watcher.wait_for(lambda: watcher.on("restart/video/state"), 60, "the first state")
        for _attempt in range(4):
            before = watcher.json_on("restart/video/state")[-1]
            stopped_at = time.monotonic()
            consumer.send_signal(signal.SIGINT)
            errs.append(consumer.communicate(timeout=30)[1])
            assert consumer.returncode == 0, errs[-1]
            consumer = attach_mqtt("mqttlive", broker.url, "--topic-prefix", "restart")

            def since_restart(topic: str) -> list[tuple[dict, float]]:
                return [(json.loads(p), t) for top, p, _, t in watcher.messages
                        if top == topic and t > stopped_at]  # noqa: B023

            first_at = watcher.wait_for(lambda: since_restart("restart/video/state"), 60,
                                        "a state after the restart")[0][1]
            if [t for _, t in since_restart("ref/video/event") if t <= first_at + 0.5]:
                continue  # the video changed state while the consumer restarted: again
            states = [s for s, t in since_restart("restart/video/state") if t <= first_at]
            print(f"before the restart {before}; after {states}")
            assert [(s["label"], s["since"]) for s in states] == [(before["label"], before["since"])]
            assert not [e for e, t in since_restart("restart/video/event") if t <= first_at + 0.5]
            break
        else:
            pytest.fail("the video changed state during each of 4 restarts")
    finally:
        for proc in (consumer, ref):
            proc.send_signal(signal.SIGINT)
            errs.append(proc.communicate(timeout=30)[1])
        watcher.close()
    assert "Traceback" not in "".join(errs), errs


def test_two_hosts_running_a_pipeline_of_one_name_share_no_topic_or_entity(broker, live):
    """The other host is this one in a UTS namespace of its own (another hostname): each
    consumer's default prefix and Home Assistant ids carry its host; one going offline leaves the
    other online; the other host taking this one's prefix while it is online is refused."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "--uts", "true"]).returncode != 0:
        pytest.skip("needs root and unshare(1) to give a process another hostname")

    def elsewhere(*args: str) -> subprocess.Popen:
        return subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname otherhost && exec "$@"',
                                 "sh", *ATTACH, "--name", "mqttlive", "--consumer", "mqtt",
                                 "--broker", broker.url, *args], cwd=ROOT, text=True,
                                stderr=subprocess.PIPE)

    here_prefix = f"edge-pipeline/{host_name()}/mqttlive"
    there_prefix = "edge-pipeline/otherhost/mqttlive"
    assert here_prefix != there_prefix
    watcher = Watcher(broker.port, [("homeassistant/#", 1), ("edge-pipeline/#", 1)])
    here = attach_mqtt("mqttlive", broker.url, "--discovery")
    there = elsewhere("--discovery")
    try:
        for prefix in (here_prefix, there_prefix):
            watcher.wait_for(lambda: watcher.on(f"{prefix}/availability")[-1:] == [b"online"], 30,
                             f"{prefix} online")
            watcher.wait_for(lambda: watcher.on(f"{prefix}/video/state"), 60, f"{prefix}'s state")
        def ours() -> dict[str, dict]:  # (the broker keeps other tests' configs too)
            configs = {t: json.loads(p) for t, p, _, _ in watcher.messages if t.endswith("/config")}
            return {t: c for t, c in configs.items()
                    if c["availability_topic"] in (f"{here_prefix}/availability",
                                                   f"{there_prefix}/availability")}

        configs = watcher.wait_for(lambda: len(ours()) >= 8 and ours(), 30, "8 discovery configs")
        by_host = {prefix: [c for c in configs.values() if c["availability_topic"] ==
                            f"{prefix}/availability"] for prefix in (here_prefix, there_prefix)}
        assert [len(v) for v in by_host.values()] == [4, 4]  # class, probability, bottle, fps
        assert len({c["unique_id"] for c in configs.values()}) == 8
        assert len({c["device"]["identifiers"][0] for c in configs.values()}) == 2
        assert by_host[there_prefix][0]["device"]["name"] == "edge-pipeline mqttlive on otherhost"
        # The other host stops: its entities go offline, this host's stay online.
        there.send_signal(signal.SIGINT)
        assert there.communicate(timeout=30) and there.returncode == 0
        watcher.wait_for(lambda: watcher.on(f"{there_prefix}/availability")[-1:] == [b"offline"],
                         15, "the other host offline")
        assert watcher.on(f"{here_prefix}/availability")[-1:] == [b"online"]
        # The other host given this host's prefix while this one is online: refused, having
        # published nothing there (not even its last will).
        seen = len([m for m in watcher.messages if m[0].startswith(f"{here_prefix}/")])
        taker = elsewhere("--topic-prefix", here_prefix, "--duration", "5")
        _, err = taker.communicate(timeout=60)
        assert taker.returncode == 2, err
        assert err.strip().splitlines()[-1] == (
            f"pipeline-attach: topic prefix {here_prefix}/ is in use by host {host_name()} (it is "
            f"online); give each host its own --topic-prefix (topic_prefix)")
        time.sleep(1)
        written = [m for m in watcher.messages if m[0].startswith(f"{here_prefix}/")][seen:]
        assert not [m for m in written if m[0].endswith("/availability")], written
        assert watcher.on(f"{here_prefix}/availability")[-1:] == [b"online"]
    finally:
        for proc in (here, there):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
        watcher.close()


@pytest.mark.parametrize("a, b", [("home/cam", "home_cam"), ("café/x", "cafè/x")])
def test_prefixes_that_read_alike_get_distinct_home_assistant_ids(a, b):
    def ids(prefix: str) -> set[str]:
        return {p["unique_id"] for _, p in discovery_configs(
            pipeline="camera", prefix=prefix, sources={"video": None}, model="mobilenet_v2",
            snapshots=False, host="pi")} | {t for t, _ in discovery_configs(
                pipeline="camera", prefix=prefix, sources={"video": None}, model="mobilenet_v2",
                snapshots=False, host="pi")}
    assert not ids(a) & ids(b)
    assert ids(a) == ids(a)  # stable across restarts


def test_a_kept_state_of_another_class_ends_when_the_consumer_decides(broker, live):
    """The broker kept `tench` from an earlier run (the consumer was stopped while it showed):
    the consumer's first decision is another state, so `tench` gets its `end`, with its own
    `since`, and the new state its own."""
    kept = {"label": "tench", "index": 0, "probability": 0.9, "since": 1000.0, "host": host_name()}
    watcher = Watcher(broker.port, "differ/#")
    watcher.publish("differ/video/state", json.dumps(kept), retain=True)
    consumer = attach_mqtt("mqttlive", broker.url, "--topic-prefix", "differ")
    try:
        states = watcher.wait_for(lambda: watcher.json_on("differ/video/state")[1:], 60,
                                  "the decided state")
        events = watcher.json_on("differ/video/event")
    finally:
        consumer.send_signal(signal.SIGINT)
        _, err = consumer.communicate(timeout=30)
        watcher.close()
    assert consumer.returncode == 0, err
    assert states[0]["label"] in ("water bottle", "none") and states[0]["since"] > 1000.0
    assert events[0]["event"] == "end" and events[0]["index"] == 0 and events[0]["since"] == 1000.0
    assert events[0]["duration_s"] == round(events[0]["time"] - 1000.0, 3)
    assert [e["event"] for e in events[1:]] == (["start"] if states[0]["index"] else [])
