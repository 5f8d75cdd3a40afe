"""`pipeline-export`: a quantized torchvision classifier's weights -> an ONNX file for the
onnxruntime runtime. `pipeline-up` runs it by itself when needed; run it by hand to make the file
on a machine with torch and copy it to one without.

The export itself is workers/inference/onnx_export.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pipeline.cli.describe import description
from pipeline.config import MODEL_NAMES


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline-export", description=description(__doc__))
    ap.add_argument("--model", default="mobilenet_v2", choices=MODEL_NAMES, metavar="NAME",
                    help="torchvision quantizable classifier (default: %(default)s)")
    ap.add_argument("--weights", default="builtin",
                    help="state-dict path, \"builtin\" (the shipped MobileNetV2), \"DEFAULT\" "
                         "(torchvision's download) or \"none\" (random) (default: %(default)s)")
    ap.add_argument("--out", help="the .onnx file to write (default: the cache pipeline-up uses)")
    ap.add_argument("--engine", default="auto", help="quantized engine of the eager model")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"pipeline-export: {msg}", file=sys.stderr)
        return 2

    from workers.inference.errors import ModelError
    from workers.inference.model_plan import exported_file, installed, resolve_weights

    try:
        weights = resolve_weights(args.model, args.weights)
    except ModelError as e:
        return fail(str(e))
    if weights not in ("DEFAULT", "none") and not os.path.isfile(weights):
        return fail(f"--weights: no such file: {weights}")
    if not installed("torch") or not installed("onnxruntime"):
        return fail("exporting needs torch, torchvision and onnx: pip install 'edge-pipeline[torch]'")
    out = args.out or str(exported_file(args.model, weights))
    if not out.endswith(".onnx"):
        return fail(f"--out: {out} must end in .onnx")
    folder = os.path.dirname(os.path.abspath(out))
    if not args.out:
        os.makedirs(folder, exist_ok=True)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return fail(f"--out: cannot write into {folder}")
    if not args.quiet:
        print(f"exporting {args.model} ({weights}) to {out} ...", file=sys.stderr)
    t0 = time.monotonic()
    from workers.inference.onnx_export import ExportError, export

    try:
        meta = export(args.model, weights, out, args.engine)
    except (ExportError, ModelError) as e:
        return fail(str(e))
    except ImportError as e:
        return fail(f"exporting needs torch, torchvision and onnx ({e}): "
                    "pip install 'edge-pipeline[torch]'")
    if not args.quiet:
        size = os.path.getsize(out) / 2**20
        print(f"wrote {out}: {size:.1f} MB, input {meta['input_size']}x{meta['input_size']}, "
              f"{len(json.loads(meta['categories']))} classes, in {time.monotonic() - t0:.1f} s",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
