"""docs/protocol.md is what a client in another language is written from: the keys its tables
document must be exactly the keys a running pipeline sends (status, results, run.json), no more
and no fewer."""

from __future__ import annotations

import re
import signal
import time

from pipeline import attach
from pipeline.transport.rundir import find_pipeline

from .conftest import ROOT, launch, pipeline_cmd

DOC = ROOT / "docs" / "protocol.md"


def documented(heading: str) -> set[str]:
    """The keys in the first column of the table under `heading` (`a`, `b` rows give both)."""
    lines = DOC.read_text().splitlines()
    start = lines.index(heading)
    keys: set[str] = set()
    table: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    assert table, f"no table under {heading!r}"
    for row in table[2:]:  # after the header and the rule
        first = row.split("|")[1]
        keys |= set(re.findall(r"`([^`]+)`", first))
    return keys


def _settled(status: dict | None) -> bool:
    """Every stage has sent its own stats (not only the harness's heartbeat), and a result has
    come."""
    return bool(status and status["sources"] and all(
        m["state"] == "running" and m["threads"] is not None for m in status["stages"].values()))


def test_the_documented_keys_are_the_ones_sent(clean_machine):
    proc = launch(pipeline_cmd("demo.toml", "--quiet", "--name", "doclab", "--set",
                               "model.runtime=onnxruntime"))
    try:
        info = find_pipeline("doclab")
        with attach("doclab", status=True) as sub:
            result = sub.receive(timeout=10)
            deadline = time.monotonic() + 10
            while not _settled(sub.last_status) and time.monotonic() < deadline:
                sub.receive(timeout=1)
            status = sub.last_status
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert result is not None and status is not None

    assert set(status) == documented("### Status: the message")
    stage_keys = set().union(*(set(m) for m in status["stages"].values()))
    # stall_reason is sent only while a stage is stalled by an edge (tests/test_edge_admission.py)
    assert stage_keys | {"stall_reason"} == documented("### Status: per stage (`stages.<name>`)")
    for stage, m in status["stages"].items():
        kind = stage.split(".")[0]
        assert ("runtime" in m) == (kind == "inference") and ("on_demand" in m) == (kind == "capture")
        assert ("source" in m) == (kind != "inference")
    assert set().union(*map(set, status["sources"].values())) == \
        documented("### Status: per source (`sources.<id>`)")
    assert set(status["totals"]) == documented("### Status: totals (`totals`)")
    assert set(status["health"]) <= documented("### Status: health (`health`)")  # what it tells

    # `item` comes with an image folder's results only; the timestamps are listed in `t`'s row.
    assert set(result.raw) | {"item"} == documented('### `type = "result"`')
    t_row = next(line for line in DOC.read_text().splitlines() if line.startswith("| `t` |"))
    assert set(result.raw["t"]) <= set(re.findall(r"`(\w+)`", t_row))

    sent = {k for k, v in info.items() if not isinstance(v, dict) or k == "config"} | {
        f"{k}.{sub}" for k, v in info.items() if isinstance(v, dict) and k != "config" for sub in v}
    assert sent == documented("## Finding a pipeline")
