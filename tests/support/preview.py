"""A preview consumer attached for real, and pipelines to attach it to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .assets import ROOT
from .topologies import write_config

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
SOURCE = {"kind": "synthetic", "width": 320, "height": 240, "fps": 30}
SOI = b"\xff\xd8"  # every JPEG starts with it


def pipeline_config(tmp: Path, name: str, preview: dict | None = None) -> Path:
    """A synthetic pipeline named `name`, with a preview consumer of these options if given."""
    path = write_config(tmp / f"{name}.toml", [SOURCE], name=name, model={"weights": "none"})
    if preview:
        keys = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in preview.items())
        path.write_text(path.read_text() + '[[consumers]]\nkind = "preview"\n' + keys)
    return path


def attach_preview(name: str, *args: str, **popen) -> tuple[subprocess.Popen, int]:
    """`pipeline-attach --consumer preview` on a free port: the process and the port it serves."""
    proc = subprocess.Popen([*ATTACH, "--name", name, "--consumer", "preview", "--port", "0", *args],
                            cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            **popen)
    first = proc.stderr.readline()
    if not first.startswith("preview: open "):
        proc.kill()
        raise AssertionError(first + proc.communicate()[1])
    return proc, int(first.rsplit(":", 1)[1].strip(" /\n"))
