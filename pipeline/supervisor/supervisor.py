"""The supervisor: starts one process per stage, holds the readiness handshake, watches the
stages, prints status, and tears everything down, leaving no process and no shared memory behind.

Stages are exec'd (`python -m workers.stage`), never forked, so no torch or OpenMP state is
inherited. The supervisor owns the names of every socket and segment, so it can clean up after a
stage that was killed without a chance to clean up itself.

This module ties the run together; the processes are in lifecycle.py, the control socket in control.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import IO, Any

import zmq

from pipeline.config import Config, allowed_cores, keep_off_inference_cores
from pipeline.observe.format import format_summary, status_line
from pipeline.observe.journal import ERROR, WARNING, prefix
from pipeline.observe.report import RunReport
from pipeline.outputs import write_whole, writes_stdout
from pipeline.supervisor import startup
from pipeline.supervisor.adaptive import AdaptiveInput, SizeController
from pipeline.supervisor.control import ControlChannel
from pipeline.supervisor.deploy import COMMAND, ModelDeploy
from pipeline.supervisor.file_lines import FileLines
from pipeline.supervisor.lifecycle import StageProcesses
from pipeline.supervisor.notify import SystemdNotifier
from pipeline.supervisor.reporting import ResultsRecorder, StatusPublisher, ready_line, synthetic_note
from pipeline.supervisor.results_hub import ResultsHub
from pipeline.supervisor.roi import ROI, RegionChanges
from pipeline.supervisor.shm import all_rings, frame_rings
from pipeline.transport.messages import EOS, LOADED, READY, START, STOP
from pipeline.transport.ring import Ring
from pipeline.transport.rundir import RESULTS_IN, NameLock, RunPaths

READY_TIMEOUT_S = 300.0  # model load + TorchScript + warm-up of the largest models on a Pi
STOP_GRACE_S = 3.0  # then SIGTERM, then SIGKILL: all within 5 s


TICK_MS = 100  # the monitor's round: results, restarts, watchdog (control messages wake it)


class Supervisor:
    def __init__(self, config: Config, *, duration: float | None = None, record: str | None = None,
                 summary_json: str | None = None, quiet: bool = False, log: IO[str] = sys.stderr,
                 metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                 host: str | None = None, file_lines: str | None = None):
        """`file_lines`: for images sources, the format of the line per file on stdout
        (file_lines.FORMATS; None: none)."""
        self.config = config
        self.host = host  # None: every stage of the topology runs here
        self.stages = {i.name: i for i in config.instances(host)}
        self.workers = [n for n, i in self.stages.items() if i.kind == "inference"]
        self.duration = duration
        self.record_path = record
        self.summary_path = summary_json
        self.quiet = quiet
        self.file_lines = file_lines
        self.metrics_address = (metrics_host, metrics_port) if metrics_port is not None else None
        self.metrics = None
        self.log = log
        self.paths = RunPaths.for_instance(config.name, os.getpid())
        self.name_lock = NameLock(config.name, host)
        self.all_cores = allowed_cores()
        a = config.adaptive
        self.sizer = SizeController(a.sizes, a.target_fps, a.low, a.high, a.hold_s) \
            if a.enabled else None
        self.started_at: float | None = None
        ids = config.source_ids()
        self.report = RunReport(config.name, {
            n: (i.kind, ids[i.source] if i.source is not None else None)
            for n, i in sorted(self.stages.items(), key=lambda kv: _display_order(kv[1]))})
        self.hub: ResultsHub | None = None
        self.deploy: ModelDeploy | None = None
        self.regions: RegionChanges | None = None
        self.stop_reason: str | None = None
        self.failure: str | None = None
        self.notifier = SystemdNotifier()  # systemd's Type=notify and watchdog, when under it
        self.throttled: tuple[str, ...] = ()  # the firmware's throttling flags set now

    def say(self, text: str, level: int | None = None) -> None:
        """A line on stderr; `level` (journal.WARNING, ERROR) marks it for the journal."""
        try:
            print(prefix(level, self.log) + text, file=self.log, flush=True)
        except OSError:  # the terminal is gone (SIGHUP): run and stop without it
            pass

    # -- life cycle -----------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.name_lock.release()
            self.notifier.close()

    def _run(self) -> int:
        refusal = self._preflight()
        if refusal:
            self.say(f"pipeline-up: {refusal}", ERROR)
            return 2
        try:
            plan = self._plan_model()
        except KeyboardInterrupt:
            return 130
        if isinstance(plan, str):
            self.say(f"pipeline-up: {plan}", ERROR)
            if self.metrics:
                self.metrics.close()
            return 2
        # SIGHUP: the terminal closed; stop as for SIGTERM, summary and clean-up included.
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        self._set_up(plan)
        try:
            self._start_and_monitor()
        finally:
            self._shutdown()
            self.results.close_record()
            for s, h in old.items():
                signal.signal(s, h)
        return self._finish()

    def _set_up(self, plan: Any) -> None:
        """The run directory, the sockets and the record file: what `_shutdown` takes down."""
        if self.workers:
            keep_off_inference_cores(self.config)
        here = list(self.stages.values())
        self.paths.create(self.config.model_dump_json(), host=self.host, stages=list(self.stages),
                          rings=frame_rings(self.config, here, self.paths), results=bool(self.workers),
                          model_cores=self.config.cores_of("inference"))
        if plan is not None:
            self.paths.model_plan_file.write_text(plan.to_json())
        self.zctx = zmq.Context()
        self.control = ControlChannel(self.zctx, self.paths.endpoint("control"), self.report, self.say,
                                      self._on_stats)
        if self.workers:  # one results endpoint, however many workers publish into it
            self.hub = ResultsHub(self.zctx, self.paths.endpoint(RESULTS_IN),
                                  self.paths.endpoint("results"), self.paths.result_seq_file,
                                  self.control.reject)
            self.deploy = ModelDeploy(self.zctx, self.paths, self.config, self.control, self.workers,
                                      self._plan_for, self.say)
        preprocessors = [n for n, i in self.stages.items() if i.kind == "preprocess"]
        if self.deploy:  # preprocessing runs beside inference: regions change over the same socket
            self.regions = RegionChanges(self.config, self.control, {
                self.stages[n].source: n for n in preprocessors}, self.say, self.deploy.reply)
            self.deploy.handlers[ROI] = self.regions.request
        self.adaptive = AdaptiveInput(self.sizer, self.control, preprocessors, self.say) \
            if self.sizer else None
        self.children = StageProcesses(self.config, self.stages, self.paths, self.all_cores,
                                       self.report, self.control, self.say)
        self.status = StatusPublisher(self.zctx, self.paths.endpoint("status"), self.report, self.metrics,
                                      self.quiet, self.say)
        lines = FileLines(self.config, self.file_lines, warn=lambda text: self.say(text, WARNING)) \
            if self.file_lines and self.workers else None
        self.results = ResultsRecorder(self.zctx, self.hub, self.report, self.metrics, self.record_path,
                                       self.say, lines)

    def _start_and_monitor(self) -> None:
        note = synthetic_note(self.config) if self.workers else None
        if note:
            self.say(note)
        self.children.spawn_all(with_consumers=bool(self.workers))
        starting = f"starting {len(self.stages)} stage(s): {', '.join(self.stages)}" \
            + (" (loading the model)" if self.workers else "")
        self.say(starting)
        self.notifier.status(starting)
        if self._await_ready():
            self.control.broadcast(START)
            self.report.mark_started()
            self.started_at = time.monotonic()
            where = f"results on {self.paths.endpoint('results')}" if self.workers else \
                f"capture for host {self.config.inference.host} ({', '.join(self.stages)})"
            self.say(f"running: {where}  (Ctrl-C stops)")
            self.notifier.started(f"running: {where}")
            self._monitor()

    def _finish(self) -> int:
        """The summary, if the pipeline ever ran, and the exit code."""
        if self.results.lines:
            self.results.lines.finish(ended=self.stop_reason == "end of stream")
        if self.started_at is not None:
            summary = self.report.summary(self.stop_reason or "failure", self.failure)
            if self.summary_path:
                try:
                    write_whole(self.summary_path, json.dumps(summary, indent=2) + "\n")
                except OSError as e:  # a full disk: like --record, one line, and the summary below
                    self.say(f"--summary-json: cannot write {self.summary_path} ({e.strerror}); "
                             "the summary is only below", WARNING)
            if self.results.lines or (self.record_path and writes_stdout(self.record_path)):
                # stdout holds results (lines per file, or the record): the summary joins the status
                self.say(format_summary(summary))
            else:
                try:
                    print(format_summary(summary), flush=True)
                except OSError:  # no terminal any more
                    pass
        if self.failure:
            self.say(f"pipeline-up: {self.failure}", ERROR)
            return 1
        if self.started_at is None and self.stop_reason in signal.Signals.__members__:
            self.say(f"pipeline-up: stopped by {self.stop_reason} before every stage was ready",
                     WARNING)
            return 128 + signal.Signals[self.stop_reason]
        return 0

    def _preflight(self) -> str | None:
        """Everything that can refuse a start before anything is started: a name in use, too
        little shared memory, a metrics port that is taken. Also clears orphaned segments."""
        refused = startup.refusal(self.config, self.host, self.say)  # names the other's pid
        if not refused and not self.name_lock.acquire():  # atomic: two at one moment
            refused = (f"a pipeline named '{self.config.name}' is already running or starting; "
                       "choose another with --name")
        if refused:
            return refused
        sources = range(len(self.config.source_list))
        too_long = self.paths.too_long([RESULTS_IN, "results", "control", "status", COMMAND, *(
            self.config.edge_name(e, i) for e in ("frames", "tensors", "credits") for i in sources)])
        if too_long:
            return too_long
        if self.metrics_address:
            from pipeline.observe.metrics import MetricsExporter

            host, port = self.metrics_address
            try:
                self.metrics = MetricsExporter(port, host)
            except OSError as e:
                return f"cannot serve metrics on {host}:{port}: {e.strerror}"
            self.say(f"metrics: http://{host}:{self.metrics.port}/metrics")
        return None

    def _plan_model(self) -> Any:
        """Which runtime and model file the workers load (None on a host without workers), or
        a one-line refusal."""
        if not self.workers:
            return None
        return startup.plan_model(self.config, self.stages[self.workers[0]], self.say)

    def _plan_for(self, config: Config) -> Any:
        """The plan of a model to deploy (ModelPlan), or a one-line refusal."""
        return startup.plan_model(config, self.stages[self.workers[0]], self.say)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name

    def _await_ready(self) -> bool:
        ready: dict[str, dict] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(self.stages):
            if self.stop_reason or self._stage_failed():
                return False
            if time.monotonic() > deadline:
                self.failure = f"stages not ready after {READY_TIMEOUT_S:.0f} s: " + \
                    ", ".join(s for s in self.stages if s not in ready)
                return False
            for stage, msg in self.control.receive(100):
                if msg.get("type") == READY:
                    ready[stage] = msg
                    self.report.on_ready(stage, msg)
                    if stage in self.workers:
                        self.children.spawn_waiting()
        self.say(ready_line(self.config, list(self.stages), self.workers, ready))
        return True

    def _monitor(self) -> None:
        end = time.monotonic() + self.duration if self.duration else None
        next_status = time.monotonic() + 1.0
        eos: set[str] = set()  # stages that reached the end of the stream
        eos_at: float | None = None
        poller = zmq.Poller()
        poller.register(self.control.socket, zmq.POLLIN)
        if self.deploy:
            poller.register(self.deploy.socket, zmq.POLLIN)
        self.children.watchdog(time.monotonic())  # from now on, a gap in its rounds is a pause of ours
        while self.stop_reason is None:
            # Results do not wake this loop: they wait in the hub's queue to be taken in batches,
            # ten times a second, instead of costing a wake-up and these checks each.
            events = dict(poller.poll(TICK_MS))
            self.results.drain()
            if self.control.socket in events:
                self._handle_control(eos)
            now = time.monotonic()
            if self.deploy:
                if self.deploy.socket in events:
                    self.deploy.receive()
                self.deploy.tick(now)
            if self.regions:
                self.regions.tick(now)
            self.children.respawn_due(now)
            self.children.watchdog(now)
            eos_at = self._note_end_of_stream(now, eos, eos_at)
            if end is not None and now >= end:
                self.stop_reason = "duration"
            if self._stage_failed():
                return
            self.children.check_consumers()
            if now >= next_status:
                next_status = now + 1.0
                status = self.status.publish()
                self.notifier.tick(status, status_line(status))
                self._note_throttling(status.get("health", {}))

    def _note_throttling(self, health: dict[str, Any]) -> None:
        """One warning when the firmware starts throttling (heat, under-voltage), one line when
        it stops: the usual reason a Pi got slow."""
        now = tuple(health.get("throttled_now", ()))
        if now == self.throttled:
            return
        if now:
            temp = health.get("cpu_temperature_c")
            self.say(f"throttling: {', '.join(now)} now (firmware flags {health['throttled']:#x}"
                     + (f", CPU {temp:.1f} °C" if temp is not None else "") + "): expect fewer fps; "
                     "check the power supply and the cooling", WARNING)
        else:
            self.say("throttling: ended")
        self.throttled = now

    def _handle_control(self, eos: set[str]) -> None:
        """Note the stages at the end of the stream; start restarted stages once ready."""
        for stage, msg in self.control.receive(0):
            if msg.get("type") == EOS:
                eos.add(stage)
                if msg.get("failure") and not self.failure:  # e.g. a file that ended short
                    self.failure = str(msg["failure"])
            elif msg.get("type") == LOADED and self.deploy:
                self.deploy.on_loaded(stage, msg)
            elif msg.get("type") == READY and stage in self.children.down:
                self.children.rejoin(stage, msg, self._settings(stage))

    def _note_end_of_stream(self, now: float, eos: set[str], eos_at: float | None) -> float | None:
        """When the stream ended (None: not yet); stops the pipeline once it has."""
        # The end: every worker has run dry; on a host without workers, every capture has
        # ended (and had a moment to hand its last frames to the link).
        finishing = self.workers or [n for n, i in self.stages.items() if i.kind == "capture"]
        if eos_at is None and set(finishing) <= eos:
            eos_at = now
        if eos_at is not None and (self.workers or now - eos_at > 1.0):
            self.stop_reason = "end of stream"
        return eos_at

    def _stage_failed(self) -> bool:
        """Let the stages that exited restart by policy; True (with `failure` set) when the
        pipeline must stop instead."""
        failure = self.children.check(starting=self.started_at is None)
        if failure is None:
            return False
        self.failure = failure
        return True

    # -- adaptive resolution --------------------------------------------------------------
    def _on_stats(self, stage: str, stats: dict[str, Any]) -> None:
        if stage == self._first_worker() and self.adaptive:
            self.adaptive.on_stats(stats)
        if self.regions:
            self.regions.on_stats(stage, stats)

    def _settings(self, stage: str) -> dict[str, Any]:
        """The run-time settings a restarted stage starts with: the input size, its region."""
        return {**(self.adaptive.settings() if self.adaptive else {}),
                **(self.regions.settings(stage) if self.regions else {})}

    def _first_worker(self) -> str | None:
        """The worker whose model time drives adaptive resolution (all run the same model)."""
        return next((w for w in self.workers if w not in self.children.down), None)

    # -- the end --------------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop every stage within STOP_GRACE_S (escalating to signals), then remove all traces."""
        self.report.stopped = time.monotonic()
        self.notifier.stopping(self.stop_reason or self.failure or "failure")
        self.control.broadcast(STOP)
        # Ready stages finish in order; one still loading cannot hear STOP: SIGTERM stops it.
        ready = list(self.report.ready)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and self.children.stages_running(ready):
            self.control.receive(20)
            self.results.drain()  # results still in flight belong in the record and the figures
        if self.hub is not None:  # consumers see the end of the stream and finish on their own
            self.hub.publish_end(self.config.name, "end of stream" if self.stop_reason == "end of stream"
                                 else "stopped")
        self.children.wait_for_consumers(2.0)
        self.children.terminate()
        self.control.receive(0)  # final stats ("bye") from stages that stopped cleanly
        for stage in self.stages:  # and exact drop counts from those that had to be killed
            try:
                self.children.collect_drops(stage)
            except OSError as e:
                self.say(f"stage '{stage}': its last drop counts could not be read ({e.strerror})",
                         WARNING)
        self.results.drain()
        self._remove_traces()

    def _remove_traces(self) -> None:
        """Rings, sockets, the run directory and the metrics endpoint."""
        for name in all_rings(self.config, list(self.stages.values()), self.paths):
            Ring.unlink(name)
        if self.hub is not None:
            self.hub.close()
        if self.deploy is not None:
            self.deploy.close()
        self.control.close()
        self.results.close()
        self.status.close()
        self.zctx.term()
        self.paths.remove()
        if self.metrics:
            self.metrics.close()


def _display_order(inst: Any) -> tuple[int, int]:
    """Status lines follow the frames: captures, preprocessors, workers."""
    order = {"capture": 0, "preprocess": 1, "inference": 2}[inst.kind]
    return order, inst.source if inst.source is not None else inst.worker
