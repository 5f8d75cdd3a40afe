"""Times each runtime on the same model, input size, cores and threads as the worker will have:
`python -m workers.inference.runtime_probe JSON-ARGS` prints `{"torch": ms, "onnxruntime": ms,
"litert": ms}` for the runtimes in its `files` (p50 of about a second of frames each, after
warm-up, one runtime loaded at a time). Run by `model_plan.measured` in its own process,
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

    out = {}
    for runtime, file in args["files"].items():  # torch last: it stays loaded once imported
        if runtime == "onnxruntime":
            clf = OnnxClassifier(file, args["threads"])
        elif runtime == "litert":
            clf = LiteRTClassifier(file, args["threads"])
        else:
            continue
        out[runtime] = p50_ms(clf.logits, x)
        del clf
    if "torch" in args["files"]:
        clf = TorchClassifier(args["model"], args["files"]["torch"], args["engine"], args["jit"],
                              args["threads"], args["channels_last"])
        out["torch"] = p50_ms(clf.logits, x)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
