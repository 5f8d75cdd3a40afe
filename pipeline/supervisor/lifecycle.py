"""The processes the supervisor starts (one per stage, and the consumers), and what happens when
one of them ends or hangs: restart by policy, rejoin, or give up; at the end, stop them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import CORES_ENV, Config, Instance
from pipeline.observe.journal import WARNING
from pipeline.observe.report import RunReport
from pipeline.observe.tally import take as take_tally
from pipeline.supervisor.control import ControlChannel
from pipeline.supervisor.restarts import RestartBudget
from pipeline.transport.rundir import RunPaths

OWN_PAUSE_S = 1.0  # the watchdog looks every 0.1 s: a longer gap means the supervisor was paused


class StageProcesses:
    def __init__(self, config: Config, stages: dict[str, Instance], paths: RunPaths, cores: list[int],
                 report: RunReport, control: ControlChannel, say: Callable[..., None]):
        """`stages`: this host's stage instances by name; `cores`: the set they all start from."""
        self.config = config
        self.stages = stages
        self.paths = paths
        self.all_cores = cores
        self.report = report
        self.control = control
        self.say = say
        self.procs: dict[str, subprocess.Popen] = {}
        self.consumers: dict[str, subprocess.Popen] = {}
        rules = config.supervision
        self.budgets = {n: RestartBudget(getattr(config, i.kind).restart, rules)
                        for n, i in stages.items()}
        self.down: dict[str, float] = {}  # stage -> when it went down (restart pending)
        self.respawn_at: dict[str, float] = {}  # stage -> when to start its replacement
        self.untallied: set[str] = set()  # ended stages whose drop counts could not be read yet
        self.hung: dict[str, float] = {}  # stage -> how long it was silent when killed
        self.waiting: list[str] = []  # workers not started yet (see spawn_all)
        self._watched_at: float | None = None  # the watchdog's last look
        self._own_pause_end = 0.0  # when the supervisor last resumed from a pause of its own

    # -- starting ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        root = str(Path(__file__).resolve().parents[2])  # the folder holding pipeline/ and workers/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env[CORES_ENV] = ",".join(map(str, self.all_cores))  # stages start from the full set
        return env

    def spawn(self, stage: str) -> None:
        inst = self.stages[stage]
        threads = len(self.config.cores_for(inst))
        if inst.kind == "inference" and self.config.inference.threads:
            threads = self.config.inference.threads
        self.procs[stage] = subprocess.Popen(
            [sys.executable, "-m", "workers.stage", "--stage", stage,
             "--run-dir", str(self.paths.dir), "--parent", str(os.getpid())],
            env=dict(self._env(), OMP_NUM_THREADS=str(threads)), stdin=subprocess.DEVNULL)
        self.control.pids[stage] = self.procs[stage].pid

    def spawn_all(self, with_consumers: bool) -> None:
        """Every stage, except that no more workers load at once than they have cores (each
        loading worker is a peak of memory and CPU); `spawn_waiting` starts the rest."""
        env = self._env()
        workers = [s for s, i in self.stages.items() if i.kind == "inference"]
        self.waiting = workers[len(self.config.cores_of("inference")):]
        for stage in self.stages:
            if stage not in self.waiting:
                self.spawn(stage)
        # Consumers connect while the model loads, so they see the first result.
        for i, c in enumerate(self.config.consumers if with_consumers else []):
            label = f"{c.kind}#{i + 1}"
            cmd = [sys.executable, "-m", "pipeline.cli.attach", "--name", self.config.name,
                   "--label", label, *c.attach_args()]
            self.consumers[label] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def spawn_waiting(self) -> None:
        """A worker finished loading: the next one may start."""
        if self.waiting:
            self.spawn(self.waiting.pop(0))

    # -- watching ---------------------------------------------------------------------------
    def check_consumers(self) -> None:
        """A consumer that exits is reported once; the pipeline runs on without it."""
        for label, proc in list(self.consumers.items()):
            code = proc.poll()
            if code is not None:
                del self.consumers[label]
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                self.say(f"consumer {label} ended ({how}); the pipeline runs on", WARNING)

    def check(self, starting: bool) -> str | None:
        """Handle stages that exited on their own: restart them by policy, or return why the
        pipeline must stop. While `starting`, no stage is restarted."""
        for stage, proc in self.procs.items():
            code = proc.poll()
            if code is None or stage in self.respawn_at:
                continue
            self.control.receive(0)  # pick up its error message, if it sent one
            try:
                self.collect_drops(stage)
            except OSError:  # no descriptor left: read before its successor starts (respawn_due)
                self.untallied.add(stage)
            why = self._why(stage, code)
            if starting:  # still starting up: no restarts, report and stop
                return f"stage '{stage}' {why}"
            decision = self.budgets[stage].decide(code)
            if isinstance(decision, str):
                return f"stage '{stage}' {why}; not restarted: {decision}"
            self._schedule_restart(stage, why, decision)
        return None

    def collect_drops(self, stage: str) -> None:
        """The drop counts of a stage process that has ended (read once: its successor starts a
        tally of its own); OSError if the file cannot be read now (it stays for another try)."""
        self.report.final_drops(stage, take_tally(self.paths.drops_file(stage)))
        self.untallied.discard(stage)

    def _why(self, stage: str, code: int) -> str:
        """How a stage ended, for the user."""
        if stage in self.hung:
            return f"hung (no heartbeat for {self.hung.pop(stage):.1f} s, killed)"
        if stage in self.control.errors:
            return f"failed: {self.control.errors.pop(stage)}"
        if code < 0:
            return f"died (killed by {signal.Signals(-code).name})"
        return f"exited unexpectedly with code {code}"

    def _schedule_restart(self, stage: str, why: str, delay: float) -> None:
        now = time.monotonic()
        self.down[stage] = now
        self.respawn_at[stage] = now + delay
        self.report.stage_down(stage, why)
        self.say(f"stage '{stage}' {why}; restarting in {delay:.1f} s "
                 f"(restart {len(self.budgets[stage].times)} of "
                 f"{self.config.supervision.max_restarts} per "
                 f"{self.config.supervision.restart_window_s:g} s)", WARNING)

    def respawn_due(self, now: float) -> None:
        for stage, due in list(self.respawn_at.items()):
            if now >= due:
                del self.respawn_at[stage]
                try:
                    if stage in self.untallied:  # its predecessor's counts first, or they are lost
                        self.collect_drops(stage)
                    self.spawn(stage)
                except OSError as e:  # e.g. no file descriptor left: `check` retries by the policy
                    self.control.errors[stage] = f"could not be restarted ({e.strerror})"

    def rejoin(self, stage: str, msg: dict[str, Any], settings: dict[str, Any]) -> None:
        """A restarted stage is ready: it starts at once, the others never stopped."""
        self.report.on_ready(stage, msg)
        self.control.start(stage, settings)
        self.say(f"stage '{stage}' is back after {time.monotonic() - self.down.pop(stage):.1f} s")

    def watchdog(self, now: float) -> None:
        """A stage that stopped reporting (hung, deadlocked, SIGSTOPped) is killed; its exit is
        then handled like any other by its restart policy."""
        limit = self.config.supervision.watchdog_s
        if self._watched_at is not None and now - self._watched_at > OWN_PAUSE_S:
            self._own_pause_end = now  # we were stopped or starved: the silence was ours
        self._watched_at = now
        if not limit:
            return
        for stage, proc in self.procs.items():
            seen = self.report.seen.get(stage)
            if stage in self.down or stage in self.hung or seen is None or proc.poll() is not None:
                continue
            seen = max(seen, self._own_pause_end)  # their heartbeats may still be on the way
            if now - seen > limit:
                self.hung[stage] = now - seen
                self.say(f"stage '{stage}' sent no heartbeat for {now - seen:.1f} s: killing it",
                         WARNING)
                proc.kill()

    # -- stopping ---------------------------------------------------------------------------
    def stages_running(self, among: list[str] | None = None) -> bool:
        return any(p.poll() is None for s, p in self.procs.items() if among is None or s in among)

    def wait_for_consumers(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(
                p.poll() is None for p in self.consumers.values()):
            time.sleep(0.05)

    def terminate(self, grace_s: float = 1.0) -> None:
        """Whatever still runs, stage or consumer: SIGTERM, then SIGKILL, `grace_s` for all of
        them together (a stage still loading its model stops at SIGTERM)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in [*self.procs.values(), *self.consumers.values()] if p.poll() is None]
            for p in alive:
                p.send_signal(sig)
            deadline = time.monotonic() + grace_s
            for p in alive:
                try:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
