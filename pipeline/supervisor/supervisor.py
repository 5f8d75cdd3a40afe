"""The supervisor: starts one process per stage, holds the readiness handshake, watches the
stages, prints status, and tears everything down, leaving no process and no shared memory behind.

Stages are exec'd (`python -m workers.stage`), never forked, so no torch or OpenMP state is
inherited. The supervisor owns the names of every socket and segment, so it can clean up after a
stage that was killed without a chance to clean up itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import zmq

from pipeline.config import CORES_ENV, Config, allowed_cores, keep_off_inference_cores
from pipeline.observe.report import RunReport, format_status, format_summary
from pipeline.supervisor.adaptive import SizeController
from pipeline.supervisor.restarts import RestartBudget
from pipeline.supervisor.results_hub import ResultsHub
from pipeline.transport.messages import BYE, EOS, ERROR, READY, STATS, pack, unpack
from pipeline.transport.ring import Ring
from pipeline.transport.rundir import RESULTS_IN, RunPaths, running_pipelines

READY_TIMEOUT_S = 300.0  # model load + TorchScript + warm-up of the largest models on a Pi
MAX_MESSAGE = 64 * 1024  # bytes; control, stats and descriptors are far smaller
STOP_GRACE_S = 3.0  # then SIGTERM, then SIGKILL: all within 5 s


class Supervisor:
    def __init__(self, config: Config, *, duration: float | None = None, record: str | None = None,
                 summary_json: str | None = None, quiet: bool = False, log: IO[str] = sys.stderr,
                 metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                 host: str | None = None):
        self.config = config
        self.host = host  # None: every stage of the topology runs here
        self.stages = {i.name: i for i in config.instances(host)}
        self.workers = [n for n, i in self.stages.items() if i.kind == "inference"]
        self.duration = duration
        self.record_path = record
        self.summary_path = summary_json
        self.quiet = quiet
        self.metrics_address = (metrics_host, metrics_port) if metrics_port is not None else None
        self.metrics = None
        self.log = log
        self.paths = RunPaths.for_instance(config.name, os.getpid())
        self.procs: dict[str, subprocess.Popen] = {}
        self.all_cores = allowed_cores()
        a = config.adaptive
        self.sizer = SizeController(a.sizes, a.target_fps, a.low, a.high, a.hold_s) \
            if a.enabled else None
        self.consumers: dict[str, subprocess.Popen] = {}
        rules = config.supervision
        self.budgets = {n: RestartBudget(getattr(config, i.kind).restart, rules)
                        for n, i in self.stages.items()}
        self.down: dict[str, float] = {}  # stage -> when it went down (restart pending)
        self.respawn_at: dict[str, float] = {}  # stage -> when to start its replacement
        self.hung: dict[str, float] = {}  # stage -> how long it was silent when killed
        self.started_at: float | None = None
        self.errors: dict[str, str] = {}
        ids = config.source_ids()
        self.report = RunReport(config.name, {
            n: (i.kind, ids[i.source] if i.source is not None else None)
            for n, i in sorted(self.stages.items(), key=lambda kv: _display_order(kv[1]))})
        self.hub: ResultsHub | None = None
        self.stop_reason: str | None = None
        self.failure: str | None = None

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    # -- life cycle -----------------------------------------------------------------------
    def run(self) -> int:
        refusal = self._preflight()
        if refusal:
            self.say(f"pipeline-up: {refusal}")
            return 2
        try:
            plan = self._plan_model()
        except KeyboardInterrupt:
            return 130
        if isinstance(plan, str):
            self.say(f"pipeline-up: {plan}")
            if self.metrics:
                self.metrics.close()
            return 2
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        if self.workers:
            keep_off_inference_cores(self.config)
        self.paths.create(self.config.model_dump_json(), host=self.host, stages=list(self.stages),
                          rings=self._frame_rings(), results=bool(self.workers))
        if plan is not None:
            self.paths.model_plan_file.write_text(plan.to_json())
        self.zctx = zmq.Context()
        if self.workers:  # one results endpoint, however many workers publish into it
            self.hub = ResultsHub(self.zctx, self.paths.endpoint(RESULTS_IN),
                                  self.paths.endpoint("results"))
        self.ctl = self.zctx.socket(zmq.ROUTER)
        self.ctl.setsockopt(zmq.LINGER, 0)
        self.ctl.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)  # a peer sending more is disconnected
        self.ctl.bind(self.paths.endpoint("control"))
        self.results = self.zctx.socket(zmq.SUB)
        self.results.setsockopt(zmq.LINGER, 0)
        self.results.setsockopt(zmq.RCVHWM, 100000)
        self.results.setsockopt(zmq.SUBSCRIBE, b"")
        self.results.setsockopt(zmq.RECONNECT_IVL, 10)
        if self.workers:
            self.results.connect(self.paths.endpoint("results"))
        self.status = self.zctx.socket(zmq.PUB)
        self.status.setsockopt(zmq.LINGER, 0)
        self.status.setsockopt(zmq.SNDHWM, 10)
        self.status.bind(self.paths.endpoint("status"))
        self.record = open(self.record_path, "w") if self.record_path else None
        try:
            self._spawn_all()
            if self._await_ready():
                self._broadcast("start")
                self.report.mark_started()
                self.started_at = time.monotonic()
                where = f"results on {self.paths.endpoint('results')}" if self.workers else \
                    f"capture for host {self.config.inference.host} ({', '.join(self.stages)})"
                self.say(f"running: {where}  (Ctrl-C stops)")
                self._monitor()
        finally:
            self._shutdown()
            if self.record:
                self.record.close()
            for s, h in old.items():
                signal.signal(s, h)
        if self.started_at is not None:
            summary = self.report.summary(self.stop_reason or "failure", self.failure)
            print(format_summary(summary), flush=True)
            if self.summary_path:
                Path(self.summary_path).write_text(json.dumps(summary, indent=2) + "\n")
        if self.failure:
            self.say(f"pipeline-up: {self.failure}")
            return 1
        return 0

    def _preflight(self) -> str | None:
        """Everything that can refuse a start before anything is started: a name in use, too
        little shared memory, a metrics port that is taken. Also clears orphaned segments."""
        for other in running_pipelines():  # the halves of a split pipeline may share a machine
            if other["name"] != self.config.name:
                continue
            if self.host is None or other.get("host") in (None, self.host):
                return (f"a pipeline named '{self.config.name}' is already running "
                        f"(pid {other['pid']}); choose another with --name")
        from pipeline.supervisor.shm import preflight, remove_orphans

        removed = remove_orphans()
        if removed:
            self.say(f"removed {len(removed)} shared-memory segment(s) left by a killed pipeline: "
                     + ", ".join(removed))
        refusal = preflight(self.config, self._frame_bytes(), host=self.host)
        if refusal:
            return refusal
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
        a one-line refusal. May export the model or measure the runtimes, once per machine."""
        if not self.workers:
            return None
        from workers.inference.classifier import ModelError
        from workers.inference.model_plan import plan_model

        first = self.stages[self.workers[0]]
        cores = self.config.cores_for(first)
        threads = self.config.inference.threads or len(cores)
        try:
            return plan_model(self.config.model, self.config.preprocess.crop_size, cores, threads,
                              self.say)
        except ModelError as e:
            return str(e)

    def _frame_bytes(self) -> list[int]:
        """Largest frame of each source captured here (0 for another host's: not here to ask)."""
        from workers.capture.sources import frame_bytes_estimate

        return [frame_bytes_estimate(src) if self.host in (None, src.host) else 0
                for src in self.config.source_list]

    def _frame_rings(self) -> dict[str, str]:
        """Each source's rings on this host, by edge name; `frames...` is the ring a result's
        frame_slot points into (the received copy when frames arrive over tcp)."""
        rings = {}
        for inst in self.stages.values():
            if inst.source is None:
                continue
            frames = self.config.edge_name("frames", inst.source)
            if inst.kind == "preprocess":
                rings[frames] = self.paths.shm_name(self.config.frames_ring(inst.source))
                tensors = self.config.edge_name("tensors", inst.source)
                rings[tensors] = self.paths.shm_name(tensors)
            else:
                rings.setdefault(frames, self.paths.shm_name(frames))
        return rings

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name

    def _env(self) -> dict[str, str]:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env[CORES_ENV] = ",".join(map(str, self.all_cores))  # stages start from the full set
        return env

    def _spawn(self, stage: str) -> None:
        inst = self.stages[stage]
        threads = len(self.config.cores_for(inst))
        if inst.kind == "inference" and self.config.inference.threads:
            threads = self.config.inference.threads
        self.procs[stage] = subprocess.Popen(
            [sys.executable, "-m", "workers.stage", "--stage", stage,
             "--run-dir", str(self.paths.dir), "--parent", str(os.getpid())],
            env=dict(self._env(), OMP_NUM_THREADS=str(threads)), stdin=subprocess.DEVNULL)

    def _spawn_all(self) -> None:
        env = self._env()
        for stage in self.stages:  # workers first: the model loads longest
            self._spawn(stage)
        # Consumers connect while the model loads, so they see the first result.
        for i, c in enumerate(self.config.consumers if self.workers else []):
            cmd = [sys.executable, "-m", "pipeline.cli.attach", "--name", self.config.name,
                   "--consumer", c.kind, "--port", str(c.port), "--host", c.host]
            cmd += ["--out", c.out] if c.out else []
            cmd += ["--fps", str(c.fps)] if c.fps else []
            cmd += ["--frames"] if c.frames else []
            self.consumers[f"{c.kind}#{i + 1}"] = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL)

    def _check_consumers(self) -> None:
        """A consumer that exits is reported once; the pipeline runs on without it."""
        for label, proc in list(self.consumers.items()):
            code = proc.poll()
            if code is not None:
                del self.consumers[label]
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                self.say(f"consumer {label} ended ({how}); the pipeline runs on")

    def _await_ready(self) -> bool:
        ready: dict[str, dict] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(self.stages):
            if self.stop_reason or self._check_children():
                return False
            if time.monotonic() > deadline:
                self.failure = f"stages not ready after {READY_TIMEOUT_S:.0f} s: " + \
                    ", ".join(s for s in self.stages if s not in ready)
                return False
            for stage, msg in self._control(100):
                if msg.get("type") == READY:
                    ready[stage] = msg
                    self.report.on_ready(stage, msg)
        kinds = sorted({ready[s].get("source") for s in ready if ready[s].get("source")})
        what = f"{len(self.config.source_list)} sources" if len(self.config.source_list) > 1 \
            else f"{kinds[0] if kinds else 'remote'} source"
        pulled = sum(bool(m.get("on_demand")) for m in ready.values())
        what += " read on demand" if pulled and pulled == len(self.config.source_list) else \
            f" ({pulled} read on demand)" if pulled else ""
        inf = ready[self.workers[0]] if self.workers else None
        model = (f"{inf.get('model')} on {inf.get('runtime')} ({inf.get('plan')}; engine "
                 f"{inf.get('engine')}) with {inf.get('threads')} thread(s)"
                 f"{f' x {len(self.workers)} workers' if len(self.workers) > 1 else ''}") \
            if inf else f"no model here (inference on host {self.config.inference.host})"
        self.say(f"ready: {what}, {model}; cores "
                 + ", ".join(f"{s} {ready[s].get('cores')}" for s in self.stages))
        return True

    def _monitor(self) -> None:
        end = time.monotonic() + self.duration if self.duration else None
        next_status = time.monotonic() + 1.0
        eos: set[str] = set()  # stages that reached the end of the stream
        eos_at: float | None = None
        poller = zmq.Poller()
        poller.register(self.ctl, zmq.POLLIN)
        poller.register(self.results, zmq.POLLIN)
        while self.stop_reason is None:
            events = dict(poller.poll(100))
            if self.results in events:
                self._drain_results()
            if self.ctl in events:
                for stage, msg in self._control(0):
                    if msg.get("type") == EOS:
                        eos.add(stage)
                    elif msg.get("type") == READY and stage in self.down:
                        self._rejoin(stage, msg)
            now = time.monotonic()
            self._respawn_due(now)
            self._watchdog(now)
            # The end: every worker has run dry; on a host without workers, every capture has
            # ended (and had a moment to hand its last frames to the link).
            finishing = self.workers or [n for n, i in self.stages.items() if i.kind == "capture"]
            if eos_at is None and set(finishing) <= eos:
                eos_at = now
            if eos_at is not None and (self.workers or now - eos_at > 1.0):
                self.stop_reason = "end of stream"
            if end is not None and now >= end:
                self.stop_reason = "duration"
            if self._check_children():
                return
            self._check_consumers()
            if now >= next_status:
                next_status = now + 1.0
                status = self.report.status()
                self.status.send(pack(status))
                if self.metrics:
                    self.metrics.on_status(status)
                if not self.quiet:
                    lines = format_status(status)
                    self.say(f"[{status['elapsed_s']:6.1f}s] " + f"\n{'':9}".join(lines))

    def _drain_results(self) -> None:
        """Take every waiting result."""
        while True:
            try:
                raw = self.results.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = unpack(raw)
            except Exception:
                continue
            if msg.get("type") != "result":
                continue
            try:
                self.report.on_result(msg)
            except (TypeError, ValueError, KeyError, AttributeError):  # not from our workers
                self._reject("malformed result")
                continue
            if self.metrics:
                self.metrics.on_result(msg)
            if self.record:
                self.record.write(json.dumps(msg) + "\n")

    def _control(self, timeout_ms: int) -> list[tuple[str, dict]]:
        """Control messages from the stages (stats and errors are absorbed here). Anything else
        that reaches the control socket is dropped, counted, and logged once per kind."""
        out = []
        if not self.ctl.poll(timeout_ms):
            return out
        while True:
            try:
                frames = self.ctl.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            stage = frames[0].decode(errors="replace").rpartition(":")[0]
            if len(frames) != 2 or frames[0] != self._identity(stage):
                self._reject("control message from an unknown peer")
                continue
            try:
                msg = unpack(frames[1])
            except Exception:
                self._reject("undecodable control message")
                continue
            kind = msg.get("type")
            if kind not in (READY, STATS, BYE, ERROR, EOS) or msg.get("stage") != stage:
                self._reject("control message of unknown type or sender")
                continue
            if kind in (STATS, BYE):
                self.report.on_stats(msg)
                if kind == STATS and stage == self._first_worker() and self.sizer:
                    self._adapt(msg)
            elif kind == ERROR:
                self.errors[stage] = str(msg.get("message", ""))
            out.append((stage, msg))

    def _adapt(self, stats: dict[str, Any]) -> None:
        """Adaptive resolution: feed the controller, tell preprocess when the size changes."""
        service = (stats.get("service_ms") or {}).get("p50", 0.0)
        old = self.sizer.size
        size = self.sizer.update(time.monotonic(), service)
        if size is None:
            return
        self.say(f"adaptive: input {old} -> {size} (model {service:.1f} ms per frame, "
                 f"target {self.sizer.target:g} fps)")
        for stage, inst in self.stages.items():
            if inst.kind != "preprocess":
                continue
            try:
                self.ctl.send_multipart([self._identity(stage),
                                         pack({"type": "set", "input_size": size})], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # preprocess is restarting: it gets the size with its start message

    def _first_worker(self) -> str | None:
        """The worker whose model time drives adaptive resolution (all run the same model)."""
        return next((w for w in self.workers if w not in self.down), None)

    def _identity(self, stage: str) -> bytes | None:
        """A stage's control identity: its name and the pid of its current process."""
        proc = self.procs.get(stage)
        return f"{stage}:{proc.pid}".encode() if proc else None

    def _reject(self, kind: str) -> None:
        n = self.report.rejected.get(kind, 0)
        self.report.rejected[kind] = n + 1
        if not n:
            self.say(f"dropped a {kind} (further ones are counted, not logged)")

    def _check_children(self) -> bool:
        """Handle stages that exited on their own: restart them by policy, or set `failure`
        and return True when the pipeline must stop."""
        for stage, proc in self.procs.items():
            code = proc.poll()
            if code is None or stage in self.respawn_at:
                continue
            self._control(0)  # pick up its error message, if it sent one
            if stage in self.hung:
                why = f"hung (no heartbeat for {self.hung.pop(stage):.1f} s, killed)"
            elif stage in self.errors:
                why = f"failed: {self.errors.pop(stage)}"
            elif code < 0:
                why = f"died (killed by {signal.Signals(-code).name})"
            else:
                why = f"exited unexpectedly with code {code}"
            if self.started_at is None:  # still starting up: no restarts, report and stop
                self.failure = f"stage '{stage}' {why}"
                return True
            decision = self.budgets[stage].decide(code)
            if isinstance(decision, str):
                self.failure = f"stage '{stage}' {why}; not restarted: {decision}"
                return True
            now = time.monotonic()
            self.down[stage] = now
            self.respawn_at[stage] = now + decision
            self.report.stage_down(stage, why)
            self.say(f"stage '{stage}' {why}; restarting in {decision:.1f} s "
                     f"(restart {len(self.budgets[stage].times)} of "
                     f"{self.config.supervision.max_restarts} per "
                     f"{self.config.supervision.restart_window_s:g} s)")
        return False

    def _respawn_due(self, now: float) -> None:
        for stage, due in list(self.respawn_at.items()):
            if now >= due:
                del self.respawn_at[stage]
                self._spawn(stage)

    def _rejoin(self, stage: str, msg: dict[str, Any]) -> None:
        """A restarted stage is ready: it starts at once, the others never stopped."""
        self.report.on_ready(stage, msg)
        start = {"type": "start",
                 "settings": {"input_size": self.sizer.size} if self.sizer else {}}
        self.ctl.send_multipart([self._identity(stage), pack(start)])
        self.say(f"stage '{stage}' is back after {time.monotonic() - self.down.pop(stage):.1f} s")

    def _watchdog(self, now: float) -> None:
        """A stage that stopped reporting (hung, deadlocked, SIGSTOPped) is killed; its exit is
        then handled like any other by its restart policy."""
        limit = self.config.supervision.watchdog_s
        if not limit:
            return
        for stage, proc in self.procs.items():
            seen = self.report.seen.get(stage)
            if stage in self.down or stage in self.hung or seen is None or proc.poll() is not None:
                continue
            if now - seen > limit:
                self.hung[stage] = now - seen
                self.say(f"stage '{stage}' sent no heartbeat for {now - seen:.1f} s: killing it")
                proc.kill()

    def _all_rings(self) -> set[str]:
        """Every ring a stage of this host may have made (capture's own frames ring too)."""
        names = set(self._frame_rings().values())
        for inst in self.stages.values():
            if inst.source is not None:
                names.add(self.paths.shm_name(self.config.edge_name("frames", inst.source)))
        return names

    def _broadcast(self, kind: str) -> None:
        for stage in self.procs:
            try:
                self.ctl.send_multipart([self._identity(stage), pack({"type": kind})], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _shutdown(self) -> None:
        """Stop every stage within STOP_GRACE_S (escalating to signals), then remove all traces."""
        self.report.stopped = time.monotonic()
        self._broadcast("stop")
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs.values()):
            self._control(20)
            self._drain_results()  # results still in flight belong in the record and the figures
        if self.hub is not None:  # consumers see the end of the stream and finish on their own
            self.hub.publish_end(self.config.name, "end of stream" if self.stop_reason == "end of stream"
                                 else "stopped")
        consumer_deadline = time.monotonic() + 2.0
        while time.monotonic() < consumer_deadline and any(
                p.poll() is None for p in self.consumers.values()):
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in [*self.procs.values(), *self.consumers.values()] if p.poll() is None]
            for p in alive:
                p.send_signal(sig)
            for p in alive:
                try:
                    p.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
        self._control(0)  # final stats ("bye") from stages that stopped cleanly
        self._drain_results()
        for name in self._all_rings():
            Ring.unlink(name)
        if self.hub is not None:
            self.hub.close()
        self.ctl.close(0)
        self.results.close(0)
        self.status.close(0)
        self.zctx.term()
        self.paths.remove()
        if self.metrics:
            self.metrics.close()


def _display_order(inst: Any) -> tuple[int, int]:
    """Status lines follow the frames: captures, preprocessors, workers."""
    order = {"capture": 0, "preprocess": 1, "inference": 2}[inst.kind]
    return order, inst.source if inst.source is not None else inst.worker
