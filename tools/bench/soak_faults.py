"""Fault-injection soak: the bottle video at 30 fps for a long time with an MQTT consumer (a real
mosquitto on loopback), a preview and a jsonl consumer attached, and every few minutes a fault:

    .venv/bin/python -m tools.bench.soak_faults --minutes 60 --fault-every 180 [--json soak_faults.json]

Faults, each kind once in random order (`--seed`), then again: SIGKILL or SIGSTOP/SIGCONT of a
stage, of a consumer or of the broker; /dev/shm filled to the last byte while a stage is killed; the
disk of the jsonl consumer's file filled, then freed. /dev/shm and that disk are small tmpfs in a
mount namespace of the soak's own (tools/bench/private_mounts.py; root only: without it those two faults
are skipped, saying so), so filling them touches nothing else on the machine.

After each fault it waits for the pipeline to recover (a result captured after the fault, the
consumer or broker back) and notes how long that took. At the end it accounts for every frame
and result: the supervisor's `--record` (on the ordinary disk) against the drop counters of the
summary, and checks what was left behind and how memory, descriptors and shared memory moved
(sampled like tools/bench/soak.py). It prints a verdict table and writes everything as JSON; exit 0
only if every check passed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import psutil

from tools.assets import CONFIGS, ROOT, WEIGHTS, missing
from tools.bench import soak
from tools.bench.private_mounts import PrivateMounts, fill
from tools.bench.soak import VIDEO

NAME = "soakfaults"
TOPIC = f"soak/{NAME}"  # the mqtt consumer's topic prefix
FAULTS = ("kill-stage", "stop-stage", "kill-consumer", "stop-consumer", "kill-broker", "stop-broker",
          "fill-shm", "fill-disk")
WATCHDOG_S = 5.0
RECOVER_S = 90.0  # longest wait for a recovery before calling it failed
SHM_BYTES = 64 * 2**20  # the private /dev/shm: the rings (about 8 MiB) and room to spare
DISK_BYTES = 512 * 2**20  # the private disk of the jsonl consumer (about 100 MiB an hour)
CONSUMER_RESTART_S = 5.0  # a consumer that ended on its own is started again after this
WINDOW_SLACK = 2  # frames: a fault window's drop counts come once a second, its seq bounds exactly
RSS_GROWTH_MB, FD_GROWTH = 25, 3  # as tests/e2e/test_reliability.py's bounded soak


class FaultSoak:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.rng = random.Random(args.seed)
        self.mounts: PrivateMounts | None = None
        self.notes: list[str] = []  # faults skipped and why
        self.broker: Any = None
        self.watcher: Any = None
        self.proc: subprocess.Popen | None = None
        self.supervisor: psutil.Process | None = None
        self.sub: Any = None
        self.consumers: dict[str, subprocess.Popen] = {}
        self.consumer_ends: list[dict[str, Any]] = []  # consumers that ended on their own
        self.faults: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.newest_capture = 0.0  # captured_at of the newest result seen
        self.newest_seq = 0  # frame seq of the newest result seen (one source)
        self.restart_at: dict[str, float] = {}  # consumer -> earliest restart (a crash loop waits)
        self.started = 0.0
        self.next_sample = 0.0
        self.disk_dir = str(work / "disk")

    # -- setting up -------------------------------------------------------------------------
    def start(self) -> None:
        from tests.support.mqtt_broker import Broker, Watcher, free_port

        os.makedirs(self.disk_dir)
        try:
            self.mounts = PrivateMounts(SHM_BYTES, self.disk_dir, DISK_BYTES)
        except PermissionError as e:
            self.notes.append(f"fill-shm and fill-disk skipped: {e}")
        self.broker = Broker(self.work / "broker")
        self.preview_port = free_port()
        self.watcher = Watcher(self.broker.port, f"{TOPIC}/#")
        sets = [f"source.path={VIDEO}", f"model.weights={WEIGHTS}", "source.loop=true",
                "source.realtime=true", f"source.fps={self.args.fps}", f"supervision.watchdog_s={WATCHDOG_S}",
                "supervision.max_restarts=20", "capture.restart=always", "preprocess.restart=always",
                "inference.restart=always"]
        cmd = [*self.prefix(), sys.executable, "-m", "pipeline.cli.up", str(CONFIGS / "video.toml"),
               "--name", NAME, "--record", str(self.work / "record.jsonl"),
               "--summary-json", str(self.work / "summary.json")]
        for s in sets:
            cmd += ["--set", s]
        log = open(self.work / "pipeline.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.supervisor = psutil.Process(self.proc.pid)
        from pipeline import attach
        from pipeline.transport.rundir import NotRunning

        deadline = time.monotonic() + 180
        while self.sub is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the pipeline did not start: {self._tail('pipeline.log')}")
            try:
                self.sub = attach(NAME, status=True)
            except NotRunning:
                time.sleep(0.2)
        if self.sub.receive(timeout=180) is None:
            raise RuntimeError(f"no first result: {self._tail('pipeline.log')}")
        for kind in ("mqtt", "preview", "jsonl"):
            self.start_consumer(kind)
        self.started = self.next_sample = time.monotonic()

    def prefix(self, cwd: str = str(ROOT)) -> list[str]:
        return self.mounts.prefix(cwd) if self.mounts else []

    def inside(self, path: str) -> str:
        """A path of the namespace, seen from here."""
        return self.mounts.path(path) if self.mounts else path

    def start_consumer(self, kind: str) -> None:
        args = {"mqtt": ["--consumer", "mqtt", "--broker", self.broker.url, "--topic-prefix", TOPIC,
                         "--stats-interval", "2"],
                "preview": ["--consumer", "preview", "--port", str(self.preview_port)],
                "jsonl": ["--format", "jsonl", "--out", f"{self.disk_dir}/consumer.jsonl"]}[kind]
        self.restart_at.pop(kind, None)
        log = open(self.work / f"{kind}.log", "a")
        self.consumers[kind] = subprocess.Popen(
            [*self.prefix(), sys.executable, "-m", "pipeline.cli.attach", "--name", NAME, *args],
            cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    # -- watching ---------------------------------------------------------------------------
    def pump(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Take results, sample, notice consumers that ended, for `seconds` or until `until()`."""
        deadline = time.monotonic() + seconds
        while (now := time.monotonic()) < deadline:
            r = self.sub.receive(timeout=0.2)
            if r is not None:
                self.newest_capture = max(self.newest_capture, r.captured_at)
                self.newest_seq = max(self.newest_seq, r.seq)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the pipeline ended: {self._tail('pipeline.log')}")
            self._check_consumers()
            if now >= self.next_sample:
                self.next_sample += self.args.every
                self._sample(now)
            if until is not None and until():
                return True
        return until is None

    def _sample(self, now: float) -> None:
        others = {}
        for kind, p in self.consumers.items():
            try:
                others[f"consumer.{kind}"] = psutil.Process(p.pid)
            except psutil.Error:
                pass
        row = soak.sample(self.supervisor, self.sub.last_status, now - self.started,
                          self.inside("/dev/shm"), others)
        row["preview_ok"] = self.preview_ok()
        row["mqtt_stats_age_s"] = round(time.monotonic() - self._last_stats(), 1)
        self.rows.append(row)
        if not self.args.quiet:
            print(json.dumps(row), file=sys.stderr, flush=True)

    def _check_consumers(self) -> None:
        """A consumer that ended without being killed here is noted (with its last words) and
        started again."""
        now = time.monotonic()
        for kind, p in list(self.consumers.items()):
            if p.poll() is None or getattr(p, "noted", False) or getattr(p, "killed_here", False):
                continue
            p.noted = True  # type: ignore[attr-defined]
            self.consumer_ends.append({"t": round(now - self.started, 1), "consumer": kind,
                                       "code": p.returncode, "last_line": self._tail(f"{kind}.log"),
                                       "traceback": "Traceback" in (self.work / f"{kind}.log").read_text()})
            self.restart_at[kind] = now + CONSUMER_RESTART_S
        for kind, due in list(self.restart_at.items()):
            if now >= due:
                del self.restart_at[kind]
                self.start_consumer(kind)

    def preview_ok(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.preview_port}/latest.jpg", timeout=2) as r:
                return r.status == 200 and r.read(2) == b"\xff\xd8"
        except OSError:
            return False

    def _last_stats(self) -> float:
        times = [m[3] for m in self.watcher.messages if m[0] == f"{TOPIC}/stats"]
        return times[-1] if times else 0.0

    def _tail(self, log: str) -> str:
        try:
            lines = (self.work / log).read_text().strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def _stage_pids(self) -> dict[str, int]:
        pids = {}
        for child in self.supervisor.children():
            try:
                cmd = child.cmdline()
            except psutil.Error:
                continue
            if "--stage" in cmd:
                pids[cmd[cmd.index("--stage") + 1]] = child.pid
        return pids

    # -- faults -----------------------------------------------------------------------------
    def inject(self, kind: str) -> dict[str, Any]:
        t0 = time.monotonic()
        fault: dict[str, Any] = {"t": round(t0 - self.started, 1), "fault": kind}
        if kind in ("fill-shm", "fill-disk") and self.mounts is None:
            fault.update(skipped=True, recovered=True, recovery_s=0.0)
            return fault
        handler = getattr(self, "_" + kind.replace("-", "_"))
        seq0, drops0 = self.newest_seq, self._drops_counted()
        fault.update(handler())
        fault.setdefault("recovered", False)
        if fault["recovered"]:
            fault["recovery_s"] = round(time.monotonic() - fault.pop("_from", t0), 2)
        fault.pop("_from", None)
        self.pump(3.0)  # the status (once a second) catches up with the drops
        fault["window"] = {"seq": [seq0, self.newest_seq], "drops_counted": self._drops_counted() - drops0}
        return fault

    def _drops_counted(self) -> int:
        """Frames and tensors drops of the newest status (frames lost on the way, counted)."""
        status = self.sub.last_status or {}
        return sum(n for edge, reasons in status.get("totals", {}).get("drops", {}).items()
                   if edge != "source" for n in reasons.values())

    def _results_after(self, t_wall: float) -> bool:
        return self.pump(RECOVER_S, lambda: self.newest_capture > t_wall)

    def _kill_stage(self, full: str | None = None) -> dict[str, Any]:
        pids = self._stage_pids()
        stage = self.rng.choice(sorted(pids))
        t_wall, t0 = time.time(), time.monotonic()
        os.kill(pids[stage], signal.SIGKILL)
        ok = self._results_after(t_wall) and self._stage_pids().get(stage) not in (None, pids[stage])
        return {"target": stage, "recovered": ok, "_from": t0, "restart_expected": 1}

    def _stop_stage(self) -> dict[str, Any]:
        pids = self._stage_pids()
        stage = self.rng.choice(sorted(pids))
        hold = round(self.rng.uniform(1.0, WATCHDOG_S + 3.0), 1)  # shorter or longer than the watchdog
        os.kill(pids[stage], signal.SIGSTOP)
        self.pump(hold)
        try:
            os.kill(pids[stage], signal.SIGCONT)
        except ProcessLookupError:  # the watchdog killed it meanwhile
            pass
        t_wall, t0 = time.time(), time.monotonic()
        ok = self._results_after(t_wall)
        restarted = self._stage_pids().get(stage) != pids[stage]
        return {"target": stage, "held_s": hold, "recovered": ok, "_from": t0,
                "restart_expected": int(restarted), "restarted": restarted}

    def _consumer_back(self, kind: str, since: float) -> bool:
        if kind == "mqtt":  # a stats message published after `since`
            return self.pump(RECOVER_S, lambda: self._last_stats() > since)
        if kind == "preview":
            return self.pump(RECOVER_S, self.preview_ok)
        path, t_wall = self.inside(f"{self.disk_dir}/consumer.jsonl"), time.time()
        return self.pump(RECOVER_S, lambda: os.path.exists(path) and os.stat(path).st_mtime > t_wall
                         and os.stat(path).st_size > 0)  # written again

    def _live_consumer(self) -> str:
        return self.rng.choice(sorted(k for k, p in self.consumers.items() if p.poll() is None))

    def _kill_consumer(self) -> dict[str, Any]:
        kind = self._live_consumer()
        p = self.consumers[kind]
        p.killed_here = True  # type: ignore[attr-defined]
        p.kill()
        p.wait(10)
        self.pump(2.0)
        self.start_consumer(kind)
        t0 = time.monotonic()
        return {"target": kind, "recovered": self._consumer_back(kind, t0), "_from": t0}

    def _stop_consumer(self) -> dict[str, Any]:
        kind = self._live_consumer()
        p = self.consumers[kind]
        try:  # it may end meanwhile on its own: noted by _check_consumers, judged at the end
            os.kill(p.pid, signal.SIGSTOP)
            self.pump(10.0)
            os.kill(p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        t0 = time.monotonic()
        return {"target": kind, "held_s": 10.0, "recovered": self._consumer_back(kind, t0), "_from": t0}

    def _kill_broker(self) -> dict[str, Any]:
        self.broker.proc.kill()
        self.broker.proc.wait(10)
        self.pump(5.0)
        self.broker.start()
        t0 = time.monotonic()
        return {"target": "mosquitto", "down_s": 5.0, "recovered": self._consumer_back("mqtt", t0),
                "_from": t0}

    def _stop_broker(self) -> dict[str, Any]:
        os.kill(self.broker.proc.pid, signal.SIGSTOP)
        self.pump(10.0)
        os.kill(self.broker.proc.pid, signal.SIGCONT)
        t0 = time.monotonic()
        return {"target": "mosquitto", "held_s": 10.0, "recovered": self._consumer_back("mqtt", t0),
                "_from": t0}

    def _fill_shm(self) -> dict[str, Any]:
        """/dev/shm full to the last byte while a stage is killed: it must come back anyway."""
        filler = fill(self.inside("/dev/shm"))
        try:
            result = self._kill_stage()
            self.pump(5.0)
        finally:
            os.unlink(filler)
        return result

    def _fill_disk(self) -> dict[str, Any]:
        """The jsonl consumer's disk full for 15 s, then freed: it writes again afterwards (or
        ended with one line, noted as a consumer that ended on its own)."""
        filler = fill(self.inside(self.disk_dir))
        try:
            self.pump(15.0)
        finally:
            os.unlink(filler)
        t0 = time.monotonic()
        return {"target": "jsonl", "held_s": 15.0, "recovered": self._consumer_back("jsonl", t0),
                "_from": t0}

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> None:
        end = self.started + self.args.minutes * 60
        next_fault = self.started + self.args.warmup + 5  # after the baseline sample
        deck: list[str] = []  # every kind once, in random order, then again: a short soak sees them all
        while time.monotonic() < end:
            self.pump(max(0.0, min(next_fault, end) - time.monotonic()))
            if time.monotonic() >= end:
                break
            if not deck:
                deck = self.rng.sample(FAULTS, len(FAULTS))
            fault = self.inject(deck.pop())
            self.faults.append(fault)
            print(f"fault: {json.dumps(fault)}", file=sys.stderr, flush=True)
            next_fault = time.monotonic() + self.args.fault_every

    def stop(self) -> dict[str, Any]:
        """Stop everything; what was left behind."""
        left: dict[str, Any] = {}
        for kind, p in self.consumers.items():
            if p.poll() is None:
                p.killed_here = True  # type: ignore[attr-defined]
                p.send_signal(signal.SIGINT)
        for p in self.consumers.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                left.setdefault("consumers_not_stopping", []).append(p.args[-1])
        if self.sub is not None:
            self.sub.close()
        stage_pids = set(self._stage_pids().values()) if self.proc and self.proc.poll() is None else set()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
            try:
                left["pipeline_exit"] = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                left["pipeline_exit"] = "did not stop in 60 s (killed)"
        time.sleep(0.5)
        left["stray_processes"] = sorted(p for p in stage_pids if psutil.pid_exists(p)
                                         and psutil.Process(p).status() != psutil.STATUS_ZOMBIE)
        shm = self.inside("/dev/shm")
        left["segments"] = sorted(n for n in os.listdir(shm)
                                  if n.startswith("edge-pipeline-") and f"-{self.proc.pid}-" in n)
        return left

    def close(self) -> None:
        for p in self.consumers.values():
            if p.poll() is None:
                p.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.watcher is not None:
            self.watcher.close()
        if self.broker is not None:
            if self.broker.proc and self.broker.proc.poll() is None:
                os.kill(self.broker.proc.pid, signal.SIGCONT)
            self.broker.stop()
        if self.mounts is not None:
            self.mounts.close()


def account(record: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Every result and frame of the record against the summary's counters. Results: those
    issued that are neither recorded nor counted (dropped, unrecorded). Frames: up to the last
    recorded one of each source (`seq`), those with no result beyond the counted drops of the
    frames and tensors edges and of results."""
    result_seqs, frames, dupes = set(), collections.defaultdict(set), 0
    with open(record) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") != "result":
                continue
            if r["result_seq"] in result_seqs:
                dupes += 1
            result_seqs.add(r["result_seq"])
            frames[r["source"]].add(r["seq"])
    dropped, unrecorded = summary["results_dropped"], summary.get("results_unrecorded", 0)
    edge_drops = sum(n for edge, reasons in summary["drops"].items() if edge != "source"
                     for n in reasons.values())
    frame_gaps = sum(max(s) - len(s) for s in frames.values())
    counted = edge_drops + dropped
    return {
        "results_issued": summary["results_issued"], "results_recorded": len(result_seqs),
        "results_dropped": dropped, "results_unrecorded": unrecorded, "duplicates": dupes,
        "result_seq_gaps": max(result_seqs, default=0) - len(result_seqs),
        "results_unaccounted": summary["results_issued"] - len(result_seqs) - dropped - unrecorded,
        "frames_captured": summary["frames"]["captured"],
        "frames_to_last_result": sum(max(s) for s in frames.values()),
        "frames_without_result": frame_gaps, "frame_drops_counted": counted, "drops": summary["drops"],
        "frames_unaccounted": frame_gaps - counted,
    }


def window_gaps(record: Path, faults: list[dict[str, Any]]) -> None:
    """For each fault, the frames of its window (newest frame before it to newest after its
    recovery) that have no result in the record: set beside the drops counted meanwhile."""
    seqs = set()
    with open(record) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") == "result":
                seqs.add(r["seq"])
    for fault in faults:
        if "window" in fault:
            first, last = fault["window"]["seq"]
            fault["window"]["frames_without_result"] = sum(1 for q in range(first + 1, last + 1)
                                                           if q not in seqs)


def verdict(soaker: FaultSoak, acc: dict[str, Any], left: dict[str, Any], growth: dict[str, Any],
            summary: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(check, figures, passed) rows."""
    faults = [f for f in soaker.faults if not f.get("skipped")]
    by_kind = collections.Counter(f["fault"] for f in faults)
    failed = [f for f in faults if not f["recovered"]]
    slowest = max((f["recovery_s"] for f in faults if f["recovered"]), default=0.0)
    expected = sum(f.get("restart_expected", 0) for f in faults)
    restarts = sum(summary.get("restarts", {}).values())
    log = (soaker.work / "pipeline.log").read_text()
    windows = collections.defaultdict(lambda: [0, 0])
    for f in faults:
        if "window" in f:
            windows[f["fault"]][0] += f["window"]["frames_without_result"]
            windows[f["fault"]][1] += f["window"]["drops_counted"]
    rss = {k: v for k, v in growth["rss_mb"].items()}
    fds = {k: v for k, v in growth["fds"].items()}
    return [
        ("faults recovered", f"{len(faults) - len(failed)}/{len(faults)} "
         f"({', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()))}); slowest {slowest:.1f} s",
         not failed),
        ("stage restarts", f"{restarts} ({summary.get('restarts')}), {expected} caused by faults",
         restarts == expected),
        ("results unaccounted", f"{acc['results_unaccounted']} (recorded {acc['results_recorded']} of "
         f"{acc['results_issued']} issued, {acc['results_dropped']} counted dropped, "
         f"{acc['results_unrecorded']} unrecorded, {acc['duplicates']} duplicates)",
         acc["results_unaccounted"] == 0 and acc["duplicates"] == 0),
        ("frames unaccounted", f"{max(0, acc['frames_unaccounted'])} ({acc['frames_without_result']} of "
         f"{acc['frames_to_last_result']} frames without a result, {acc['frame_drops_counted']} "
         f"counted drops" + (f": {-acc['frames_unaccounted']} counted more than missing"
                             if acc["frames_unaccounted"] < 0 else "") + ")",
         acc["frames_unaccounted"] <= 0),
        ("frames lost vs counted, per fault kind", ", ".join(
            f"{k} {lost}/{counted}" for k, (lost, counted) in sorted(windows.items())),
         all(f["window"]["frames_without_result"] <= f["window"]["drops_counted"] + WINDOW_SLACK
             for f in faults if "window" in f)),
        ("pipeline ended cleanly", f"exit {left.get('pipeline_exit')}, "
         f"{log.count('Traceback')} tracebacks in its log",
         left.get("pipeline_exit") == 0 and "Traceback" not in log),
        ("consumers ended on their own", "; ".join(
            f"{e['consumer']} at {e['t']} s: exit {e['code']}{' with a traceback' if e['traceback'] else ''}"
            f" ({e['last_line'][:100]})" for e in soaker.consumer_ends) or "none",
         not any(e["traceback"] or e["code"] < 0 for e in soaker.consumer_ends)),
        ("left behind", f"{len(left['segments'])} segments, {len(left['stray_processes'])} processes",
         not left["segments"] and not left["stray_processes"]
         and not left.get("consumers_not_stopping")),
        ("RSS growth (MiB)", ", ".join(f"{k} {v:+.1f}" for k, v in rss.items()),
         all(v < RSS_GROWTH_MB for v in rss.values())),
        ("fd growth", ", ".join(f"{k} {v:+d}" for k, v in fds.items()),
         all(v <= FD_GROWTH for v in fds.values())),
        ("shm growth (MiB)", f"{growth['shm_mine_mb']:+.1f}", growth["shm_mine_mb"] == 0),
    ]


def print_verdict(rows: list[tuple[str, str, bool]], notes: list[str]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for check, figures, ok in rows:
            print(f"{'PASS' if ok else 'FAIL'}  {check}: {figures}")
    else:
        table = Table(title="fault-injection soak")
        for col in ("check", "figures", "verdict"):
            table.add_column(col, overflow="fold")
        for check, figures, ok in rows:
            table.add_row(check, figures, "[green]PASS[/]" if ok else "[red]FAIL[/]")
        Console().print(table)
    for note in notes:
        print(f"note: {note}")


def main() -> int:
    ap = argparse.ArgumentParser(description="Fault-injection soak: a 30 fps pipeline with mqtt, "
                                 "preview and jsonl consumers, and a fault every few minutes; every "
                                 "frame and result accounted for at the end.")
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the soak (default 60)")
    ap.add_argument("--fault-every", type=float, default=180.0,
                    help="seconds between faults (default 180)")
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate of the video source")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=30.0,
                    help="seconds before the baseline sample (the first fault 5 s later)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault sequence")
    ap.add_argument("--json", default="soak_faults.json", help="where to write the figures")
    ap.add_argument("--keep", action="store_true", help="keep the working folder (logs, record)")
    ap.add_argument("--quiet", action="store_true", help="no line per sample")
    args = ap.parse_args()
    if args.minutes <= 0 or args.fault_every <= 0 or args.every <= 0 or args.fps <= 0:
        print("soak_faults: --minutes, --fault-every, --every and --fps must be positive", file=sys.stderr)
        return 2
    for p in missing(VIDEO):
        print(f"tools.bench.soak_faults: missing asset {p}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped: clean up as for Ctrl-C
    work = Path(tempfile.mkdtemp(prefix="soak-faults-"))
    soaker = FaultSoak(args, work)
    try:
        try:
            soaker.start()
        except BaseException as e:  # pytest's skip from the broker helper is a BaseException
            if isinstance(e, KeyboardInterrupt):
                raise
            print(f"soak_faults: cannot start: {e}", file=sys.stderr)
            return 2
        for note in soaker.notes:
            print(f"note: {note}", file=sys.stderr)
        try:
            soaker.run()
        except KeyboardInterrupt:
            soaker.notes.append("interrupted before the end")
        except RuntimeError as e:  # the pipeline ended or never recovered: a failed soak
            print(f"soak_faults: {e}", file=sys.stderr)
            soaker.notes.append(f"stopped early: {e}")
        left = soaker.stop()
        summary = json.loads((work / "summary.json").read_text())
        acc = account(work / "record.jsonl", summary)
        window_gaps(work / "record.jsonl", soaker.faults)
        growth = soak.growth(soaker.rows, min(args.warmup, soaker.rows[-1]["t"]))
        rows = verdict(soaker, acc, left, growth, summary)
    finally:
        soaker.close()
    print_verdict(rows, soaker.notes)
    Path(args.json).write_text(json.dumps({
        "args": vars(args), "verdict": [{"check": c, "figures": f, "passed": ok} for c, f, ok in rows],
        "faults": soaker.faults, "consumer_ends": soaker.consumer_ends, "accounting": acc,
        "left_behind": left, "growth": growth, "restarts": summary.get("restarts"),
        "samples": soaker.rows, "notes": soaker.notes}, indent=1) + "\n")
    print(f"figures written to {args.json}" + (f"; logs and record in {work}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    finished = not any(n.startswith(("interrupted", "stopped early")) for n in soaker.notes)
    return 0 if finished and all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
