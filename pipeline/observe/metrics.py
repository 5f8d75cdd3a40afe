"""Opt-in Prometheus endpoint (`--metrics-port`): the supervisor's view of the pipeline in the
Prometheus text format, served by prometheus_client from a thread of the supervisor.

Counters and gauges mirror the latest status snapshot (so scraping costs the stages nothing);
latency histograms are observed from every result's timestamps as it arrives.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from pipeline.observe.health import FLAGS
from pipeline.observe.http import BoundedConnections, QuietErrors, TimedRequests, warn_if_exposed
from pipeline.observe.stats import written_slots
from pipeline.transport.messages import SPANS

# 1 ms .. 2.5 s: a 30 fps pipeline lives around 20-100 ms; the tail shows stalls.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5)


class _StatusCollector(Collector):
    def __init__(self) -> None:
        self.status: dict[str, Any] | None = None

    def collect(self) -> Iterator[Any]:
        st = self.status
        if st is None:
            return
        yield from _flow(st)
        yield from _health(st)
        yield from _machine(st.get("health") or {})
        yield from _sources(st)


def _flow(st: dict[str, Any]) -> Iterator[Any]:
    """Frames through each stage, queues, ring slots and drops."""
    frames = CounterMetricFamily("pipeline_frames", "Frames taken in / passed on by a stage",
                                 labels=["stage", "direction"])
    fps = GaugeMetricFamily("pipeline_stage_fps", "Frames per second over the last second",
                            labels=["stage", "direction"])
    queue = GaugeMetricFamily("pipeline_queue_depth_frames",
                              "Frames waiting for the stage when it took one (max, last second)",
                              labels=["stage"])
    hwm = GaugeMetricFamily("pipeline_queue_depth_high_water_frames",
                            "Highest input queue depth since start", labels=["stage"])
    slots = GaugeMetricFamily("pipeline_ring_slots_in_use",
                              "Ring slots holding frames not yet finished or dropped", labels=["edge"])
    drops = CounterMetricFamily("pipeline_drops", "Frames dropped, by edge and reason",
                                labels=["edge", "reason"])
    for stage, m in st["stages"].items():
        for direction in ("in", "out"):
            frames.add_metric([stage, direction], m[f"frames_{direction}"])
            fps.add_metric([stage, direction], m[f"fps_{direction}"])
        if stage.split(".")[0] != "capture":
            queue.add_metric([stage], m["queue"].get("max", 0))
            hwm.add_metric([stage], m["queue_hwm"])
        for edge, n in written_slots(stage, m).items():  # the writer's count
            slots.add_metric([edge], n)
    for edge, reasons in st["totals"]["drops"].items():
        for reason, n in reasons.items():
            drops.add_metric([edge, reason], n)
    yield from (frames, drops, fps, queue, hwm, slots)


def _machine(h: dict[str, Any]) -> Iterator[Any]:
    """The machine's temperature, clock and throttling: only what it tells (absent, not 0)."""
    if "cpu_temperature_c" in h:
        yield GaugeMetricFamily("pipeline_cpu_temperature_celsius", "CPU temperature",
                                value=h["cpu_temperature_c"])
    if "cpu_frequency_mhz" in h:
        yield GaugeMetricFamily("pipeline_cpu_frequency_hertz", "Current CPU clock (mean of the CPUs)",
                                value=h["cpu_frequency_mhz"] * 1e6)
    if "throttled" in h:
        yield GaugeMetricFamily("pipeline_throttled", "1 while the Raspberry Pi firmware throttles "
                                "(under-voltage, capped clock, throttled, soft temperature limit)",
                                value=1 if h["throttled_now"] else 0)
        flags = GaugeMetricFamily("pipeline_throttled_flag", "The firmware's get_throttled flags: "
                                  "1 while set (now) or if set since boot (since_boot)",
                                  labels=["flag", "when"])
        for flag in FLAGS.values():
            flags.add_metric([flag, "now"], 1 if flag in h["throttled_now"] else 0)
            flags.add_metric([flag, "since_boot"], 1 if flag in h["throttled_since_boot"] else 0)
        yield flags


def _health(st: dict[str, Any]) -> Iterator[Any]:
    """Each stage process: heartbeat, restarts, CPU, memory, threads and cores."""
    heartbeat = GaugeMetricFamily("pipeline_stage_heartbeat_age_seconds",
                                  "Time since the stage last reported", labels=["stage"])
    restarts = CounterMetricFamily("pipeline_stage_restarts", "Stage restarts", labels=["stage"])
    cpu = GaugeMetricFamily("pipeline_stage_cpu_usage_ratio",
                            "CPU time per second of the stage's process (1 = one core)",
                            labels=["stage"])
    rss = GaugeMetricFamily("pipeline_stage_resident_memory_bytes", "Resident memory",
                            labels=["stage"])
    threads = GaugeMetricFamily("pipeline_stage_threads", "Compute threads (torch, OpenCV)",
                                labels=["stage"])
    cores = GaugeMetricFamily("pipeline_stage_pinned_cores", "Cores the stage is pinned to",
                              labels=["stage", "cores"])
    stalled = GaugeMetricFamily("pipeline_stage_stalled", "1 while the stage has not reported for 3 s",
                                labels=["stage"])
    for stage, m in st["stages"].items():
        if m["heartbeat_age_s"] is not None:
            heartbeat.add_metric([stage], m["heartbeat_age_s"])
        restarts.add_metric([stage], m["restarts"])
        stalled.add_metric([stage], 1 if m["state"] == "stalled" else 0)
        if m["cpu_percent"] is not None:
            cpu.add_metric([stage], m["cpu_percent"] / 100)
            rss.add_metric([stage], m["rss_mb"] * 2**20)
        if m["threads"] is not None:
            threads.add_metric([stage], m["threads"])
        if m["cores"] is not None:
            cores.add_metric([stage, ",".join(map(str, m["cores"]))], len(m["cores"]))
    yield from (heartbeat, restarts, cpu, rss, threads, cores, stalled)


def _sources(st: dict[str, Any]) -> Iterator[Any]:
    """Per source and whole pipeline: capture jitter, reconnects, results, fps and latency."""
    jitter = GaugeMetricFamily("pipeline_capture_jitter_seconds",
                               "Capture inter-frame interval p99 minus p50, last second")
    if st["capture_jitter_ms"] is not None:
        jitter.add_metric([], st["capture_jitter_ms"] / 1000)
    reconnects = CounterMetricFamily("pipeline_source_reconnects", "Times the source was reopened",
                                     labels=["source"])
    for stage, m in st["stages"].items():
        if stage.split(".")[0] == "capture":
            reconnects.add_metric([m.get("source", "")], m["reconnects"])
    source_fps = GaugeMetricFamily("pipeline_source_fps", "Results per second of a source, last second",
                                   labels=["source"])
    source_latency = GaugeMetricFamily("pipeline_source_latency_p99_seconds",
                                       "End-to-end latency p99 of a source, last second",
                                       labels=["source"])
    for src, m in st.get("sources", {}).items():
        source_fps.add_metric([src], m["fps"])
        if m["latency_ms"]:
            source_latency.add_metric([src], m["latency_ms"]["p99"] / 1000)
    results = CounterMetricFamily("pipeline_results", "Results published")
    results.add_metric([], st["totals"]["results"])
    yield from (jitter, reconnects, results, source_fps, source_latency)


class _MetricsServer(QuietErrors, BoundedConnections, ThreadingWSGIServer):
    """Few connections (scrapers): the supervisor's file descriptors are for its stages."""

    label = "metrics endpoint"
    max_connections = 32


class _Handler(TimedRequests, WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # no per-request logging
        pass


def _guarded(app: Callable, server: _MetricsServer) -> Callable:
    """The app, with a failing scrape answered 500 and reported once rather than as a traceback
    per scrape."""

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except Exception as e:  # noqa: BLE001 (any collector bug)
            server.report(e)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"metrics failed; see the supervisor's output\n"]

    return guarded


def serve_metrics(registry: CollectorRegistry, host: str,
                  port: int) -> tuple[_MetricsServer, threading.Thread]:
    """prometheus_client's start_http_server, with QuietErrors (it prints a traceback per client
    that resets its connection) and BoundedConnections (it takes connections without limit)."""
    family, *_, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                              flags=socket.AI_PASSIVE)[0]

    class Server(_MetricsServer):
        address_family = family

    server = Server((str(sockaddr[0]), port), _Handler)
    server.set_app(_guarded(make_wsgi_app(registry), server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


class MetricsExporter:
    """Serves /metrics on host:port until the supervisor exits."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        self._status = _StatusCollector()
        self.registry.register(self._status)
        self.e2e = Histogram("pipeline_end_to_end_latency_seconds", "Capture to result",
                             buckets=LATENCY_BUCKETS, registry=self.registry)
        self.age = Histogram("pipeline_frame_age_at_inference_seconds",
                             "Capture to the start of inference", buckets=LATENCY_BUCKETS,
                             registry=self.registry)
        self.service = Histogram("pipeline_stage_service_seconds",
                                 "Time a stage spent on a frame that was classified",
                                 ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.server, self.thread = serve_metrics(self.registry, host, port)
        self.port = self.server.server_address[1]
        warn_if_exposed("the metrics endpoint", host, self.port, "the pipeline's status figures",
                        "--metrics-host")

    def on_status(self, status: dict[str, Any]) -> None:
        self._status.status = status

    def on_result(self, msg: dict[str, Any]) -> None:
        t = msg.get("t", {})
        try:
            self.e2e.observe((t["inference_end"] - t["capture"]) / 1e9)
            self.age.observe((t["inference_start"] - t["capture"]) / 1e9)
            for stage, a, b in SPANS:
                if a in t:
                    self.service.labels(stage).observe((t[b] - t[a]) / 1e9)
        except KeyError:
            pass

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
