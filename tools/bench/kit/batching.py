"""Child process of `tools.bench.scale --batching`: per-frame model time at batch sizes 1, 2, 4 on
one core and one thread, the question micro-batching across sources would answer.

    python -m tools.bench.kit.batching CORE WEIGHTS   -> one JSON line
"""

from __future__ import annotations

import json
import os
import sys
import time

if __name__ == "__main__":
    os.sched_setaffinity(0, {int(sys.argv[1])})  # before torch starts its threads

import torch  # noqa: E402

from workers.inference.torch_models import load_torch_model  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model = load_torch_model("mobilenet_v2", sys.argv[2], "qnnpack", True)
    out = {}
    with torch.inference_mode():
        for _ in range(2):  # two rounds: keep the better, the machine is shared
            for batch in (1, 2, 4):
                x = torch.randn(batch, 3, 224, 224)
                for _ in range(5):
                    model(x)
                n = max(1, 120 // batch)
                t0 = time.perf_counter()
                for _ in range(n):
                    model(x)
                per_frame = (time.perf_counter() - t0) / (n * batch) * 1000
                out[batch] = min(out.get(batch, per_frame), per_frame)
    print(json.dumps({str(b): round(ms, 2) for b, ms in out.items()}))


if __name__ == "__main__":
    main()
