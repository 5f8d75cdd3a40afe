"""The line per file an images source prints: in the folder's order whatever order the workers
finish in, every file once, a file without a result said so, in text, csv and jsonl."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from pipeline.config import load_config
from pipeline.supervisor.file_lines import HOLD, NO_RESULT, WAIT_S, FileLines

NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Five files an images source lists (the lines read only their names), the working folder
    the paths are shown from."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in NAMES:
        (photos / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return photos


def lines_for(folder, fmt: str = "text", *overrides: str) -> tuple[FileLines, io.StringIO]:
    config = load_config(None, ["model.weights=none", "source.kind=images", f"source.path={folder}",
                                *overrides], files=False)
    out = io.StringIO()
    return FileLines(config, fmt, out), out


def result(seq: int, frame: int, label: str, prob: float = 0.5, item: str | None = None) -> dict:
    """A result as the workers publish it, down to the fields the lines read."""
    return {"type": "result", "source": "images", "seq": seq, "frame": frame,
            "item": item or NAMES[frame], "top": [{"index": 7, "label": label, "prob": prob}]}


def test_results_out_of_order_print_in_the_folders_order(folder):
    lines, out = lines_for(folder)
    lines.on_result(result(2, 1, "bee"), 0.0)
    lines.release(0.0)
    assert out.getvalue() == "", "b waits for a, which a slower worker still has"
    lines.on_result(result(1, 0, "ant", 0.875), 0.1)
    lines.on_result(result(3, 2, "cat"), 0.1)
    lines.release(0.1)
    assert out.getvalue().splitlines() == ["photos/a.jpg  ant 0.88", "photos/b.jpg  bee 0.50",
                                           "photos/c.jpg  cat 0.50"]


def test_a_skipped_file_and_the_files_after_the_last_result_get_a_line_without_label(folder):
    lines, out = lines_for(folder)
    lines.on_result(result(1, 0, "ant"), 0.0)
    lines.on_result(result(2, 2, "cat"), 0.0)  # b.jpg was unreadable: capture went on to c.jpg
    lines.release(0.0)
    lines.finish(ended=True)  # d.jpg and e.jpg: the source ended without them
    assert out.getvalue().splitlines() == [
        "photos/a.jpg  ant 0.50", f"photos/b.jpg  {NO_RESULT}", "photos/c.jpg  cat 0.50",
        f"photos/d.jpg  {NO_RESULT}", f"photos/e.jpg  {NO_RESULT}"]


def test_a_stopped_run_names_no_file_it_did_not_reach(folder):
    lines, out = lines_for(folder)
    lines.on_result(result(1, 0, "ant"), 0.0)
    lines.finish(ended=False)  # Ctrl-C: the rest were never read
    assert out.getvalue().splitlines() == ["photos/a.jpg  ant 0.50"]


def test_a_frame_that_never_comes_is_given_up_after_a_while_or_a_backlog(folder):
    lines, out = lines_for(folder)
    lines.on_result(result(2, 1, "bee"), 0.0)  # seq 1 (a.jpg) was dropped by a latest edge
    lines.release(WAIT_S / 2)
    assert out.getvalue() == ""
    lines.release(WAIT_S + 0.1)
    assert out.getvalue().splitlines() == [f"photos/a.jpg  {NO_RESULT}", "photos/b.jpg  bee 0.50"]

    many = folder.parent / "many"
    many.mkdir()
    names = [f"{i:04d}.jpg" for i in range(HOLD + 3)]
    for name in names:
        (many / name).write_bytes(b"")
    lines, out = lines_for(many)
    for seq in range(2, HOLD + 3):  # the backlog itself says seq 1 is gone
        lines.on_result(result(seq, seq - 1, "x", item=names[seq - 1]), 0.0)
    lines.release(0.0)
    printed = out.getvalue().splitlines()
    assert printed[:2] == [f"many/0000.jpg  {NO_RESULT}", "many/0001.jpg  x 0.50"]
    assert len(printed) == HOLD + 2


def test_a_looping_folder_gets_no_lines_it_never_ends(folder):
    lines, out = lines_for(folder, "text", "source.loop=true")
    lines.on_result(result(1, 0, "ant"), 0.0)
    lines.finish(ended=False)
    assert out.getvalue() == ""


def test_csv_and_jsonl_carry_the_full_probability(folder):
    lines, out = lines_for(folder, "csv")
    lines.on_result(result(1, 0, "ant, red", 0.12345), 0.0)
    lines.finish(ended=True)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[:2] == [["path", "label", "probability"], ["photos/a.jpg", "ant, red", "0.12345"]]
    assert rows[2:] == [[f"photos/{n}", "", ""] for n in NAMES[1:]]

    lines, out = lines_for(folder, "jsonl")
    lines.on_result(result(1, 0, "ant", 0.12345), 0.0)
    lines.on_result(result(2, 1, "bee", 1.0), 0.0)
    lines.release(0.0)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"path": "photos/a.jpg", "label": "ant", "probability": 0.12345},
        {"path": "photos/b.jpg", "label": "bee", "probability": 1.0}]


def test_a_file_listed_after_the_start_is_named_by_its_result(folder):
    lines, out = lines_for(folder)
    (folder / "aa.jpg").write_bytes(b"")  # the capture stage's listing, made later, has it second
    lines.on_result(result(1, 0, "ant"), 0.0)
    lines.on_result(result(2, 1, "ant", item="aa.jpg"), 0.0)
    lines.release(0.0)
    assert out.getvalue().splitlines() == ["photos/a.jpg  ant 0.50", "aa.jpg  ant 0.50"]


def test_photos_read_on_another_host_are_named_by_their_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the model's host: the folder is the camera host's, not here
    lines, out = lines_for(tmp_path / "on-the-camera-host")
    lines.on_result(result(1, 0, "ant"), 0.0)
    lines.on_result(result(2, 3, "dog"), 0.0)
    lines.finish(ended=True)
    assert out.getvalue().splitlines() == ["a.jpg  ant 0.50", "d.jpg  dog 0.50"]


def test_a_closed_stdout_stops_the_lines_with_one_warning(folder):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left (`pipeline-up ... | head -1`)
    config = load_config(None, ["model.weights=none", "source.kind=images", f"source.path={folder}"],
                         files=False)
    said: list[str] = []
    with open(write_end, "w") as pipe:
        lines = FileLines(config, "text", pipe, warn=said.append)
        for seq in (1, 2, 3):
            lines.on_result(result(seq, seq - 1, "ant"), 0.0)
            lines.release(0.0)
        assert said == ["stdout: cannot write any more (Broken pipe); the per-file lines stopped, "
                        "the pipeline runs on"]
