"""The labelling page's HTTP API (/teach on the preview consumer), on a real pipeline playing the
bottle video and real HTTP: listing, labelling, classes, delete and undo, uploads, the write token,
origin and Host checks, paths that would leave the dataset; and the review of a running model's
uncertain results into the dataset."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from pipeline import attach
from pipeline.client.consumers.collect import file_name
from pipeline.client.consumers.preview import PreviewConsumer
from pipeline.config.schema import ConsumerConfig
from pipeline.train.dataset import COLLECTED
from pipeline.transport.rundir import find_pipeline
from tests.support.assets import BOTTLE, IMAGES, ROOT, need
from tests.support.processes import running
from tests.support.topologies import wait_for, write_config

NAME = "teachlab"
ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
FRAMES = 12  # collected-like examples seeded from the video


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    bottle = need(BOTTLE)
    config = write_config(tmp_path_factory.mktemp("teach") / f"{NAME}.toml", [
        {"kind": "video", "id": "cam1", "path": str(bottle), "loop": True, "fps": 30},
    ], name=NAME, model={"weights": "builtin", "runtime": "onnxruntime"})
    yield from running(config)


def seed(dataset: Path) -> list[str]:
    """FRAMES frames of the bottle video in dataset/unlabelled, named as collect names them (frame
    n captured at second n); their ids, newest first."""
    (dataset / "unlabelled").mkdir(parents=True)
    video = cv2.VideoCapture(str(need(BOTTLE)))
    names = []
    for n in range(FRAMES):
        video.set(cv2.CAP_PROP_POS_FRAMES, n * 30)
        ok, frame = video.read()
        assert ok
        names.append(file_name("cam1", 1.7e9 + n, n * 30))
        assert cv2.imwrite(str(dataset / "unlabelled" / names[-1]), frame)
    video.release()
    return [f"unlabelled/{n}" for n in reversed(names)]


@pytest.fixture(scope="module")
def teach(live, tmp_path_factory):
    """`pipeline-attach --consumer preview --dataset DIR` (no review): its port, token, dataset
    and the seeded ids."""
    dataset = tmp_path_factory.mktemp("data") / "bottles"
    ids = seed(dataset)
    proc = subprocess.Popen([*ATTACH, "--name", NAME, "--consumer", "preview", "--port", "0",
                             "--dataset", str(dataset), "--review-below", "0"],
                            cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first = proc.stderr.readline()
        assert first.startswith("preview: open http://127.0.0.1:"), first
        port = int(first.rsplit(":", 1)[1].strip(" /\n"))
        line = proc.stderr.readline()
        m = re.fullmatch(rf"teach: http://127\.0\.0\.1:{port}/teach#token=([A-Za-z0-9_-]{{16,}})\n", line)
        assert m, line
        yield {"port": port, "token": m[1], "dataset": dataset, "ids": ids}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        err = proc.stderr.read()
        assert proc.returncode == 0 and "Traceback" not in err, err


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, send_body: bool = True) -> tuple[int, dict, bytes]:
    """One request (Host 127.0.0.1:PORT unless `headers` say otherwise): status, headers, body.
    `send_body=False` sends the headers alone and waits for the answer (a refusal comes first)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Host": f"127.0.0.1:{port}", **(headers or {})}
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None and "Content-Length" not in headers:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        if body is not None and send_body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()


def post(t: dict, path: str, obj: dict, token: str | None = "", **headers: str) -> tuple[int, dict]:
    """A JSON POST with the right token (token ""), none (None) or the one given."""
    hdrs = {"Content-Type": "application/json", **headers}
    if token is not None:
        hdrs["X-Teach-Token"] = token or t["token"]
    status, _, body = request(t["port"], "POST", path, json.dumps(obj).encode(), hdrs)
    return status, json.loads(body)


def get_json(t: dict, path: str) -> dict:
    status, headers, body = request(t["port"], "GET", path)
    assert status == 200 and headers["Content-Type"] == "application/json", (path, status, body[:200])
    return json.loads(body)


def tree(dataset: Path) -> dict[str, list[str]]:
    """Every file of the dataset, hidden ones too, by folder."""
    return {os.path.relpath(d, dataset): sorted(os.listdir(d)) for d, _, _ in os.walk(dataset)}


def test_reads_need_no_token_and_list_the_examples_unlabelled_newest_first(teach):
    status, headers, body = request(teach["port"], "GET", "/teach")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<" in body
    assert headers["X-Frame-Options"] == "DENY"
    state = get_json(teach, "/teach/api/state")
    assert state["dataset"] == str(teach["dataset"].resolve())
    assert state["counts"]["unlabelled"] >= FRAMES and state["sources"] == ["cam1"]
    assert state["model"]["labels"][:1] == ["tench"] and state["job"]["state"] == "idle"
    examples = get_json(teach, "/teach/api/examples?source=cam1")["examples"]
    unlabelled = [e for e in examples if e["class"] == "unlabelled"]
    assert [e["id"] for e in unlabelled] == teach["ids"]
    first = unlabelled[-1]
    assert first["source"] == "cam1" and first["review"] is False and first["time"] == pytest.approx(1.7e9)
    assert first["frame"] == 0
    assert get_json(teach, "/teach/api/examples?source=nosuch")["examples"] == []
    status, headers, jpeg = request(teach["port"], "GET", f"/teach/img/{first['id']}?thumb=1")
    thumb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and thumb.shape == (90, 160, 3)
    status, _, jpeg = request(teach["port"], "GET", f"/teach/img/{first['id']}")
    assert status == 200 and jpeg == (teach["dataset"] / first["id"]).read_bytes()
    # A foreign Host is refused on reads as on the preview's own pages.
    assert request(teach["port"], "GET", "/teach/api/state", headers={"Host": "evil.example"})[0] == 403


def test_classes_labels_delete_and_undo(teach):
    ds, ids = teach["dataset"], teach["ids"]
    assert post(teach, "/teach/api/class", {"action": "create", "name": "bottle"})[0] == 200
    status, answer = post(teach, "/teach/api/class", {"action": "create", "name": "empty shelf"})
    assert status == 200 and answer["classes"] == ["bottle", "empty shelf"] and answer["undo"]
    for bad in ("../x", ".hidden", "unlabelled", "a/b", "x" * 65, "", " lead"):
        status, answer = post(teach, "/teach/api/class", {"action": "create", "name": bad})
        assert status == 400 and "class name" in answer["error"], (bad, answer)
    assert post(teach, "/teach/api/class", {"action": "create", "name": "bottle"})[0] == 400
    rename = {"action": "rename", "name": "empty shelf", "to": "empty"}
    assert post(teach, "/teach/api/class", rename)[0] == 200
    assert (ds / "empty").is_dir() and not (ds / "empty shelf").exists()

    # Many at once: all or nothing.
    status, answer = post(teach, "/teach/api/label", {"ids": ids[:5], "class": "bottle"})
    assert status == 200 and answer["ids"] == [i.replace("unlabelled/", "bottle/") for i in ids[:5]]
    assert answer["undo"] == "label 5 examples as bottle"
    assert sorted(os.listdir(ds / "bottle")) == sorted(i.split("/")[1] for i in ids[:5])
    before = tree(ds)
    status, answer = post(teach, "/teach/api/label",
                          {"ids": [ids[5], "unlabelled/nosuch-x.jpg"], "class": "empty"})
    assert status == 404 and tree(ds) == before
    assert post(teach, "/teach/api/label", {"ids": [ids[5]], "class": "nosuch"})[0] == 400
    assert post(teach, "/teach/api/label", {"ids": ids[5:8], "class": "empty"})[0] == 200
    state = get_json(teach, "/teach/api/state")
    assert state["counts"]["bottle"] == 5 and state["counts"]["empty"] == 3
    examples = get_json(teach, "/teach/api/examples")["examples"]
    order = [e["class"] for e in examples]
    assert order == sorted(order, key=lambda c: (c != "unlabelled", c))

    # Delete goes to the hidden trash; undo brings it back, then undoes the labelling before.
    status, answer = post(teach, "/teach/api/delete", {"ids": ["empty/" + ids[5].split("/")[1]]})
    assert status == 200 and answer["deleted"] == 1 and answer["undo"] == "delete 1 example"
    assert len(os.listdir(ds / "empty")) == 2 and len(os.listdir(ds / ".trash")) == 1
    status, answer = post(teach, "/teach/api/undo", {})
    assert status == 200 and answer["undone"] == "delete 1 example"
    assert len(os.listdir(ds / "empty")) == 3 and os.listdir(ds / ".trash") == []
    assert post(teach, "/teach/api/undo", {})[1]["undone"] == "label 3 examples as empty"
    assert len(os.listdir(ds / "empty")) == 0 and (ds / ids[5]).is_file()
    assert post(teach, "/teach/api/undo", {})[1]["undone"] == "label 5 examples as bottle"
    assert post(teach, "/teach/api/undo", {})[1]["undone"] == "rename class empty shelf to empty"
    assert (ds / "empty shelf").is_dir() and all((ds / i).is_file() for i in ids)
    assert post(teach, "/teach/api/undo", {})[1]["undone"] == "create class empty shelf"
    assert not (ds / "empty shelf").exists()
    post(teach, "/teach/api/undo", {})
    status, answer = post(teach, "/teach/api/undo", {})
    assert status == 400 and answer["error"] == "nothing to undo"
    assert sorted(os.listdir(ds)) == [".trash", "unlabelled"]


def test_uploads_are_limited_checked_and_named_safely(teach):
    ds = teach["dataset"]
    post(teach, "/teach/api/class", {"action": "create", "name": "fish"})
    photo = need(IMAGES / "n01440764_tench.JPEG").read_bytes()
    auth = {"X-Teach-Token": teach["token"], "Content-Type": "image/jpeg"}

    def upload(name: str, body: bytes, headers: dict = auth, send_body: bool = True) -> tuple[int, dict]:
        path = f"/teach/api/upload?class=fish&name={quote(name, safe='')}"
        status, _, answer = request(teach["port"], "POST", path, body, headers, send_body)
        return status, json.loads(answer)

    status, answer = upload("my tench!.JPEG", photo)
    assert status == 200 and answer["id"] == "fish/my_tench_.jpg", answer
    assert (ds / "fish" / "my_tench_.jpg").read_bytes() == photo
    assert upload("my tench!.JPEG", photo)[1]["id"] == "fish/my_tench_-2.jpg"  # never over a file
    before = tree(ds)
    for name, body, headers, why in [
            ("../escape.jpg", photo, auth, "plain file name"),
            ("/etc/escape.jpg", photo, auth, "plain file name"),
            ("..\\escape.jpg", photo, auth, "plain file name"),
            (".hidden.jpg", photo, auth, "plain file name"),
            ("notes.jpg", b"\xff\xd8\xff" + b"not really a picture" * 50, auth, "not a image/jpeg image"),
            ("pic.jpg", photo, {**auth, "Content-Type": "text/html"}, "an upload is image/jpeg"),
            ("pic.png", photo, {**auth, "Content-Type": "image/png"}, "not a image/png image")]:
        status, answer = upload(name, body, headers)
        assert status == 400 and why in answer["error"], (name, answer)
    # Too big: refused from its Content-Length, before a byte of it is read.
    status, answer = upload("big.jpg", b"", {**auth, "Content-Length": str(11 << 20)}, send_body=False)
    assert status == 413 and "at most" in answer["error"]
    assert tree(ds) == before
    assert post(teach, "/teach/api/undo", {})[1]["undone"] == "upload my_tench_-2.jpg into fish"
    assert not (ds / "fish" / "my_tench_-2.jpg").exists()


def test_ids_that_leave_the_dataset_are_refused(teach, tmp_path):
    ds = teach["dataset"]
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(need(IMAGES / "n01440764_tench.JPEG").read_bytes())
    (ds / "unlabelled" / "link.jpg").symlink_to(outside)
    (ds / "linked").symlink_to(tmp_path, target_is_directory=True)
    try:
        before = tree(ds)
        for bad in ["../secret.jpg", "unlabelled/../../secret.jpg", str(outside), "unlabelled/link.jpg",
                    "linked/secret.jpg", "unlabelled/.x.jpg", "unlabelled", 7]:
            status, answer = post(teach, "/teach/api/label", {"ids": [bad], "class": "unlabelled"})
            assert status == 400 and answer["error"], (bad, answer)
            assert post(teach, "/teach/api/delete", {"ids": [bad]})[0] == 400
        for path in ["/teach/img/..%2F..%2Fsecret.jpg", "/teach/img/unlabelled/link.jpg",
                     "/teach/img/linked/secret.jpg", f"/teach/img/{outside}"]:
            assert request(teach["port"], "GET", path)[0] in (400, 404), path
        assert tree(ds) == before and outside.is_file()
        assert "linked" not in get_json(teach, "/teach/api/state")["classes"]
    finally:
        (ds / "unlabelled" / "link.jpg").unlink()
        (ds / "linked").unlink()


def test_every_change_needs_the_token_the_same_origin_and_a_known_host(teach):
    ds, port = teach["dataset"], teach["port"]
    cases = [("/teach/api/label", {"ids": teach["ids"][:1], "class": "fish"}),
             ("/teach/api/class", {"action": "create", "name": "intruder"}),
             ("/teach/api/delete", {"ids": teach["ids"][:1]}), ("/teach/api/undo", {}),
             ("/teach/api/train", {}), ("/teach/api/deploy", {"model": None}), ("/teach/api/rollback", {}),
             ("/teach/api/roi", {"source": "cam1", "roi": [0, 0, 0.5, 0.5]})]
    post(teach, "/teach/api/class", {"action": "create", "name": "fish"})  # (something to undo)
    before = tree(ds)
    for path, obj in cases:
        for token, headers in [(None, {}), ("wrong" * 5, {}), (teach["token"][:-1], {}),
                               ("", {"Origin": "http://evil.example"}),
                               ("", {"Origin": f"http://localhost:{port}"}),
                               ("", {"Host": "evil.example"}),
                               ("", {"Host": f"evil.example:{port}",
                                     "Origin": f"http://evil.example:{port}"})]:
            status, answer = post(teach, path, obj, token, **headers)
            assert status == 403 and answer["error"], (path, token, headers, answer)
    assert tree(ds) == before and get_json(teach, "/teach/api/job")["state"] == "idle"
    # The page's own origin, and no Origin at all (not a browser), are accepted.
    assert post(teach, "/teach/api/undo", {}, Origin=f"http://127.0.0.1:{port}")[0] == 200
    # Not JSON, or too long, refused before anything is done.
    status, _, body = request(port, "POST", "/teach/api/undo", b"{}",
                              {"X-Teach-Token": teach["token"], "Content-Type": "text/plain"})
    assert status == 400 and b"application/json" in body
    status, _, body = request(port, "POST", "/teach/api/label", b"", {
        "X-Teach-Token": teach["token"], "Content-Type": "application/json",
        "Content-Length": str(65 << 10)}, send_body=False)
    assert status == 413
    assert request(port, "POST", "/status.json", b"{}")[0] == 405


def test_train_deploy_rollback_and_roi_answer_through_the_api(teach):
    """The routes reach the training jobs and the pipeline: a dataset with one class cannot be
    trained (the job fails saying why), nothing to deploy or roll back yet, a region the config
    would refuse is 400, a good one comes back as the config line."""
    assert request(teach["port"], "GET", "/teach/report/confusion.png")[0] == 404
    assert post(teach, "/teach/api/deploy", {"model": None})[1]["ok"] is False
    status, answer = post(teach, "/teach/api/rollback", {})
    assert status == 200 and answer["ok"] is False and "nothing to roll back" in answer["message"]
    status, job = post(teach, "/teach/api/train", {})
    assert status == 200 and job["state"] in ("running", "failed")
    wait_for(lambda: get_json(teach, "/teach/api/job")["state"] == "failed", 60, "the training to fail")
    assert "class" in get_json(teach, "/teach/api/job")["message"]
    status, answer = post(teach, "/teach/api/roi", {"source": "cam1", "roi": [0.5, 0.5, 0.9, 0.9]})
    assert status == 400 and answer["error"]
    status, answer = post(teach, "/teach/api/roi", {"source": "cam1", "roi": [0, 0, 1, 1]})
    assert status == 200 and answer["line"].startswith("roi = [") and isinstance(answer["applied"], bool)


def test_without_a_dataset_the_page_says_how(live):
    consumer = PreviewConsumer(port=0, name=NAME)
    try:
        port = consumer.server.server_address[1]
        status, _, body = request(port, "GET", "/teach")
        assert status == 404 and b"--dataset DIR" in body
        assert request(port, "POST", "/teach/api/undo", b"{}")[0] == 404
    finally:
        consumer.close()


def test_bad_options_are_one_line_and_the_consumers_schema_carries_them(live, tmp_path):
    for args, said in [(["--review-below", "2"], "--review-below must be a probability"),
                       (["--token", "short"], "--token: 16-128"),
                       (["--dataset", str(tmp_path / "file.txt")], "--dataset")]:
        (tmp_path / "file.txt").write_text("x")
        cmd = [*ATTACH, "--name", NAME, "--consumer", "preview", "--port", "0"]
        cmd += [] if "--dataset" in args else ["--dataset", str(tmp_path / "ds")]
        done = subprocess.run(cmd + args, cwd=ROOT, text=True, capture_output=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not (tmp_path / "ds").exists()
    cfg = ConsumerConfig(kind="preview", dataset="/d", token="t" * 20, review_below=0.3, models="/m")
    assert cfg.attach_args()[-8:] == ["--dataset", "/d", "--review-below", "0.3", "--token", "t" * 20,
                                      "--models", "/m"]
    with pytest.raises(ValueError, match="token"):
        ConsumerConfig(kind="preview", dataset="/d", token="bad token")


def test_uncertain_results_are_saved_for_review_spaced_and_capped(live, tmp_path):
    """review_below 0.99: the shipped model is below it on nearly every frame of the bottle video;
    a cap of 3 per source is reached and kept to."""
    dataset = tmp_path / "review"
    consumer = PreviewConsumer(port=0, name=NAME, dataset=str(dataset), review_below=0.99,
                               config=find_pipeline(NAME)["config"], token="x" * 20)
    consumer.review.cap = 3
    consumer.review.saver.min_difference = 0.0  # spacing and the cap are what is tested here
    port = consumer.server.server_address[1]
    t = {"port": port, "token": "x" * 20}
    try:
        with attach(NAME, frames=True) as sub:
            for r in sub:
                consumer.on_result(r)
                if consumer.review.saver.sources.get("cam1") and consumer.review.saver.sources["cam1"].full:
                    break
            full_at = r.captured_at
            for r in sub:  # two more seconds: nothing more is saved
                consumer.on_result(r)
                if r.captured_at > full_at + 2:
                    break
        files = sorted(os.listdir(dataset / "unlabelled"))
        assert len(files) == 3 and consumer.review.saved == 3
        for name in files:
            m = COLLECTED.match(name)
            assert m and m["source"] == "cam1", name
            image = cv2.imread(str(dataset / "unlabelled" / name))
            assert image.shape == (360, 640, 3)
        examples = get_json(t, "/teach/api/examples?source=cam1")["examples"]
        assert len(examples) == 3 and all(e["review"] for e in examples)
        seconds = sorted(e["time"] for e in examples)
        assert all(b - a >= 1.0 for a, b in zip(seconds, seconds[1:])), seconds
        # Labelled, an example is no longer offered for review.
        post(t, "/teach/api/class", {"action": "create", "name": "bottle"})
        post(t, "/teach/api/label", {"ids": [examples[0]["id"]], "class": "bottle"})
        after = {e["id"]: e["review"] for e in get_json(t, "/teach/api/examples")["examples"]}
        assert after[examples[0]["id"].replace("unlabelled/", "bottle/")] is False
    finally:
        consumer.close()
