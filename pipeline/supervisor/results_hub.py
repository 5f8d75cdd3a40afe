"""One results endpoint for any number of inference workers.

Workers publish into an XSUB socket; a ZeroMQ proxy (C code, in a thread of the supervisor, off
the GIL) forwards every result to the XPUB socket subscribers connect to. The high-water mark
that protects the pipeline from a slow subscriber lives here, per subscriber. The supervisor also
publishes the end-of-stream marker here once every worker has finished.
"""

from __future__ import annotations

import threading

import zmq

from pipeline.transport.messages import EOS, SCHEMA, pack

RESULTS_HWM = 16  # results queued per subscriber before it starts losing them
RESULTS_SNDBUF = 8 * 1024  # bytes of kernel buffer per subscriber connection


class ResultsHub:
    def __init__(self, zctx: zmq.Context, inbound: str, outbound: str):
        self._zctx = zctx
        self._ctl_endpoint = f"inproc://results-hub-{id(self)}"
        ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(inbound, outbound, ready),
                                        name="results-hub", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error:
            raise self._error
        self._ctl = zctx.socket(zmq.PAIR)
        self._ctl.connect(self._ctl_endpoint)
        self._pub = zctx.socket(zmq.PUB)  # connected now, so the end marker is not lost later
        self._pub.setsockopt(zmq.LINGER, 500)
        self._pub.connect(inbound)

    def _run(self, inbound: str, outbound: str, ready: threading.Event) -> None:
        xsub = self._zctx.socket(zmq.XSUB)
        xpub = self._zctx.socket(zmq.XPUB)
        ctl = self._zctx.socket(zmq.PAIR)
        try:
            for sock in (xsub, xpub, ctl):
                sock.setsockopt(zmq.LINGER, 0)
            xsub.setsockopt(zmq.RCVHWM, 10000)
            xpub.setsockopt(zmq.SNDHWM, RESULTS_HWM)
            xpub.setsockopt(zmq.SNDBUF, RESULTS_SNDBUF)
            xsub.bind(inbound)
            xpub.bind(outbound)
            ctl.bind(self._ctl_endpoint)
        except zmq.ZMQError as e:
            self._error = e
            ready.set()
            return
        ready.set()
        try:
            zmq.proxy_steerable(xsub, xpub, None, ctl)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (xsub, xpub, ctl):
                sock.close(0)

    def publish_end(self, pipeline: str, reason: str) -> None:
        """Tell every subscriber the stream has ended (after the workers' last results)."""
        self._pub.send(pack({"schema": SCHEMA, "type": EOS, "pipeline": pipeline,
                             "reason": reason}))

    def close(self) -> None:
        self._pub.close()
        self._ctl.send(b"TERMINATE")
        self._ctl.close()
        self._thread.join(timeout=2.0)
