"""The client side of a running pipeline's `command` socket (pipeline/supervisor/deploy.py): one
request, one reply. Used by `pipeline-deploy` and the teach page alike.

    request_deploy(name, weights, labels="", timeout=...) -> (ok, message)
    command(name, request, timeout) -> (ok, message, reply)
"""

from __future__ import annotations

from typing import Any

import zmq

from pipeline.supervisor.deploy import COMMAND, LOAD_TIMEOUT_S
from pipeline.transport.messages import pack, unpack
from pipeline.transport.rundir import NotRunning, RunPaths, RuntimeDirError, find_pipeline

PLAN_TIMEOUT_S = 900.0  # a state dict's export and runtime measurement on a slow board
DEPLOY_TIMEOUT_S = LOAD_TIMEOUT_S + PLAN_TIMEOUT_S


def command(name: str | None, request: dict[str, Any], timeout: float) -> tuple[bool, str, dict[str, Any]]:
    """Send `request` to pipeline `name` (None: the only one running here) and wait up to
    `timeout` seconds for its reply: (ok, one line, the whole reply)."""
    try:
        info = find_pipeline(name)
    except (NotRunning, RuntimeDirError) as e:
        return False, str(e), {}
    if "results" not in info["endpoints"]:
        return False, (f"pipeline '{info['name']}' runs no model on this machine (host "
                       f"{info.get('host')}): ask where its inference runs"), {}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(RunPaths.load(info["dir"]).endpoint(COMMAND))
        sock.send(pack(request))
        if not sock.poll(int(timeout * 1000)):
            return False, f"no answer from pipeline '{info['name']}' within {timeout:.0f} s", {}
        reply = unpack(sock.recv())
    except (zmq.ZMQError, ValueError) as e:
        return False, f"pipeline '{info['name']}': {e}", {}
    finally:
        sock.close(0)
        ctx.term()
    reply.setdefault("pipeline", info["name"])
    return bool(reply.get("ok")), str(reply.get("message") or ""), reply


def request_deploy(name: str | None, weights: str, labels: str = "",
                   timeout: float = DEPLOY_TIMEOUT_S) -> tuple[bool, str]:
    """Switch pipeline `name` to the model file `weights` (an absolute path, or "builtin"):
    (True, "pipeline 'NAME': now running ...") once every worker runs it, or (False, why in one
    line; the old model runs on)."""
    ok, message, reply = command(name, {"weights": weights, "labels": labels}, timeout)
    if ok:
        return True, f"pipeline '{reply['pipeline']}': {message}"
    return False, f"{message}; the running model stays" if reply else message
