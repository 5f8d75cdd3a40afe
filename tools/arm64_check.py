"""The lean install on aarch64, checked in an emulated arm64 Debian userland: what installs, what
`auto` measures, which int8 kernels onnxruntime fuses, and the top-1 of labelled photos in LiteRT
and onnxruntime against this machine's.

Emulation (qemu) says that it installs and gives the same answers on an Arm CPU's code paths
(`--cpu cortex-a72`: a Pi 4's, no dot product), never how fast: its timings mean nothing.

Needs an arm64 chroot tool taking `sync` and `run CMD` (ARM64_CHROOT_TOOL, e.g. the
arm64-chroot.sh of the shared tools, which builds the userland the first time) and a folder of
labelled photos. Usage (from the project root, as root):
    .venv/bin/python -m tools.arm64_check --chroot-tool ../shared/tools/arm64-chroot.sh \\
        --images ../shared/assets/images [--cpu cortex-a72]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

from tools.assets import ROOT

RUNTIMES = ("litert", "onnxruntime")
FUSED = """
import collections, onnx, onnxruntime as ort
from workers.inference.model_files import builtin_onnx
from workers.inference.qdq_format import for_this_cpu
opts = ort.SessionOptions(); opts.log_severity_level = 3
opts.optimized_model_filepath = "/tmp/optimized.onnx"
ort.InferenceSession(for_this_cpu(str(builtin_onnx()))[0], opts, providers=["CPUExecutionProvider"])
ops = collections.Counter(n.op_type for n in onnx.load("/tmp/optimized.onnx").graph.node)
print({k: ops[k] for k in ("QLinearConv", "Conv", "QLinearAdd", "Add")})
"""


def top1(csv_text: str) -> dict[str, str]:
    """File name -> top-1 label, from `pipeline-up --format csv`."""
    return {Path(r["path"]).name: r["label"] for r in csv.DictReader(io.StringIO(csv_text))}


def photos(images: Path, runtime: str, run: list[str] | None = None, images_there: str = "") -> str:
    """The CSV lines of the photos classified in `runtime`, here or through `run` (the chroot)."""
    args = ["pipeline-up", "configs/images.toml", "--set", f"source.path={images_there or images}",
            "--set", f"model.runtime={runtime}", "--set", "inference.workers=1",
            "--set", "supervision.watchdog_s=300", "--format", "csv", "--quiet"]
    if run is None:
        cmd = [str(ROOT / ".venv" / "bin" / args[0]), *args[1:]]
    else:
        cmd = [*run, "sh", "-c", " ".join([".venv/bin/" + args[0], *map(quote, args[1:])])]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"arm64_check: {runtime} failed: {p.stderr.strip().splitlines()[-1:]}")
    return p.stdout


def quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chroot-tool", type=Path, required=True, help="arm64-chroot.sh (sync, run CMD)")
    ap.add_argument("--images", type=Path, required=True, help="labelled photos (JPEG files)")
    ap.add_argument("--cpu", default="cortex-a72", help="emulated core (default: %(default)s)")
    args = ap.parse_args(argv)
    if not args.chroot_tool.is_file() or not args.images.is_dir():
        print("arm64_check: --chroot-tool must be a file and --images a folder", file=sys.stderr)
        return 2
    os.environ["ARM64_CPU"] = args.cpu
    tool = ["bash", str(args.chroot_tool.resolve())]
    subprocess.run([*tool, "sync"], cwd=ROOT, check=True, capture_output=True)
    run = [*tool, "run"]
    try:  # the chroot tool copies ../shared into the chroot's /root/shared
        there = f"/root/shared/{args.images.resolve().relative_to(ROOT.parent / 'shared')}"
    except ValueError:
        print(f"arm64_check: --images must be under {ROOT.parent / 'shared'}", file=sys.stderr)
        return 2

    def say(cmd: str) -> None:
        p = subprocess.run([*run, "sh", "-c", cmd], cwd=ROOT, capture_output=True, text=True)
        print("\n".join(f"  {line}" for line in (p.stdout + p.stderr).strip().splitlines()
                        if not line.startswith("INFO:")))

    print(f"== emulated {args.cpu}: machine, Python, the lean install's packages")
    say("uname -m; python3 --version; .venv/bin/pip list 2>/dev/null | "
        "grep -Ei '^(torch|onnxruntime|ai-edge-litert|numpy) '; grep -m1 Features /proc/cpuinfo")
    print("== auto: the probe and the ready line (emulated timings mean nothing)")
    say(f"XDG_CACHE_HOME=$(mktemp -d) .venv/bin/pipeline-up configs/images.toml --set "
        f"source.path={quote(there + '/' + sorted(p.name for p in args.images.glob('*.JPEG'))[0])} "
        f"--set supervision.watchdog_s=300 2>&1 | grep -E '^(measur|ready)'")
    print("== onnxruntime's optimized graph there: int8 kernels fused")
    say(f".venv/bin/python -c {quote(FUSED)}")
    failed = False
    for runtime in RUNTIMES:
        here, arm = top1(photos(args.images, runtime)), top1(photos(args.images, runtime, run, there))
        same = sum(arm.get(k) == v for k, v in here.items())
        print(f"== {runtime}: {len(arm)} photos on arm64, {len(here)} here; the same top-1 for {same}")
        for k in sorted(here):
            if arm.get(k) != here[k]:
                print(f"  {k}: here {here[k]!r}, arm64 {arm.get(k)!r}")
        failed |= same != len(here) or len(arm) != len(here)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
