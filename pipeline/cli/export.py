"""`pipeline-export`: a quantized torchvision classifier's weights -> an ONNX file for
onnxruntime, or a TFLite file for LiteRT (`--out FILE.tflite`, converted from the ONNX file; an
.onnx given as --weights, e.g. a model pipeline-train wrote, converts without torch).
`pipeline-up` does both by itself when needed; run it by hand to make the file on a machine with
torch and copy it to one without.

The export itself is workers/inference/onnx_export.py, the conversion tflite_export.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pipeline.cli.describe import description
from pipeline.config import MODEL_NAMES
from pipeline.errors import UserError
from workers.inference.model_files import builtin_weights


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline-export", description=description(__doc__))
    ap.add_argument("--model", default="mobilenet_v2", choices=MODEL_NAMES, metavar="NAME",
                    help="torchvision quantizable classifier (default: %(default)s)")
    ap.add_argument("--weights", default="builtin",
                    help="state-dict path, \"builtin\" (the shipped MobileNetV2), \"DEFAULT\" "
                         "(torchvision's download), \"none\" (random), or an .onnx file to convert "
                         "to TFLite (default: %(default)s)")
    ap.add_argument("--out", help="the .onnx or .tflite file to write (default: the .onnx in the "
                                  "cache pipeline-up uses)")
    ap.add_argument("--engine", default="auto", help="quantized engine of the eager model")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(msg: str) -> int:
        print(f"pipeline-export: {msg}", file=sys.stderr)
        return 2

    from workers.inference.errors import ModelError
    from workers.inference.model_plan import exported_file, installed, onnx_for, resolve_weights

    try:
        weights = resolve_weights(args.model, args.weights)
    except ModelError as e:
        return fail(str(e))
    if weights not in ("DEFAULT", "none") and not os.path.isfile(weights):
        return fail(f"--weights: no such file: {weights}")
    given_onnx = weights.lower().endswith(".onnx")
    if weights.lower().endswith(".tflite"):
        return fail(f"--weights: {weights} is already a TFLite file")
    out = args.out or (None if given_onnx else str(exported_file(args.model, weights)))
    if out is None or not out.endswith((".onnx", ".tflite")):
        return fail(f"--out: {out} must end in .onnx or .tflite" if out else
                    "--out FILE.tflite is needed to convert an ONNX file")
    tflite = out.endswith(".tflite")
    if given_onnx and not tflite:
        return fail(f"--weights: {weights} is an ONNX file already; --out FILE.tflite converts it")
    if tflite and not installed("litert"):
        return fail("writing a .tflite needs ai-edge-litert: pip install ai-edge-litert")
    needs_torch = not given_onnx and (not tflite or weights != str(builtin_weights()))
    if needs_torch and (not installed("torch") or not installed("onnxruntime")):
        return fail("exporting needs torch, torchvision and onnx: pip install 'edge-pipeline[torch]'")
    folder = os.path.dirname(os.path.abspath(out))
    if not args.out:
        os.makedirs(folder, exist_ok=True)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return fail(f"--out: cannot write into {folder}")
    say = (lambda _: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    t0 = time.monotonic()
    from workers.inference.onnx_export import export
    from workers.inference.tflite_export import convert

    try:
        if tflite:
            source = weights if given_onnx else str(onnx_for(args.model, weights, say))
            say(f"converting {source} to {out} ...")
            meta = convert(source, out)
        else:
            say(f"exporting {args.model} ({weights}) to {out} ...")
            meta = export(args.model, weights, out, args.engine)
    except UserError as e:  # ExportError, ConvertError, ModelError, an unreadable model file
        return fail(str(e))
    except ImportError as e:
        return fail(f"exporting needs torch, torchvision and onnx ({e}): "
                    "pip install 'edge-pipeline[torch]'")
    size = os.path.getsize(out) / 2**20
    say(f"wrote {out}: {size:.1f} MB, input {meta.get('input_size', '?')}x{meta.get('input_size', '?')}, "
        f"{len(json.loads(meta['categories'])) if 'categories' in meta else '?'} classes, "
        f"in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
