"""Times each runtime on the same model, input size, cores and threads as the worker will have:
`python -m workers.inference.runtime_probe JSON-ARGS` prints `{"ms": {"torch": ms, "onnxruntime":
ms, "litert": ms}, "failed": {runtime: why}}` for the runtimes in its `files` (p50 of about a
second of frames each, after warm-up, one runtime loaded at a time; one that fails is named, not
fatal). Run by `model_plan.measured` in its own process,
so the torch it loads dies with it.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

MEASURE_S = 1.0
WARMUP = 10


def p50_ms(run, x: np.ndarray) -> float:
    for _ in range(WARMUP):
        run(x)
    times = []
    end = time.monotonic() + MEASURE_S
    while time.monotonic() < end or len(times) < 20:
        t = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t) * 1e3)
    return round(float(np.median(times)), 3)


def main() -> int:
    args = json.loads(sys.argv[1])
    os.sched_setaffinity(0, args["cores"])  # before any runtime starts its threads
    os.environ["OMP_NUM_THREADS"] = str(args["threads"])
    x = np.random.default_rng(0).standard_normal((1, 3, args["size"], args["size"])).astype(np.float32)
    from workers.inference.classifier import LiteRTClassifier, OnnxClassifier, TorchClassifier

    def load(runtime: str, file: str):
        if runtime == "onnxruntime":
            return OnnxClassifier(file, args["threads"])
        if runtime == "litert":
            return LiteRTClassifier(file, args["threads"])
        return TorchClassifier(args["model"], file, args["engine"], args["jit"], args["threads"],
                               args["channels_last"])

    ms: dict[str, float] = {}
    failed: dict[str, str] = {}
    # torch last: once imported it stays loaded, and its threads with it
    for runtime in sorted(args["files"], key=lambda r: r == "torch"):
        try:  # a runtime that is installed but cannot load or run the model is left out, not fatal
            ms[runtime] = p50_ms(load(runtime, args["files"][runtime]).logits, x)
        except Exception as e:
            failed[runtime] = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    print(json.dumps({"ms": ms, "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
