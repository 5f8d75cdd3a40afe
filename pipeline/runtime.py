"""Where a running pipeline instance keeps its sockets and shared memory.

Every name carries the pipeline's name and the supervisor's pid, so two instances never collide and
everything one instance made can be found and removed by that prefix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

EDGES = ("frames", "tensors")


def runtime_root() -> Path:
    """Per-user directory (mode 0700) holding one sub-directory per running pipeline."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"edge-pipeline-{os.getuid()}"


@dataclass(frozen=True)
class RunPaths:
    name: str
    pid: int
    dir: Path

    @classmethod
    def for_instance(cls, name: str, pid: int) -> "RunPaths":
        return cls(name, pid, runtime_root() / f"{name}-{pid}")

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "RunPaths":
        info = json.loads((Path(run_dir) / "run.json").read_text())
        return cls(info["name"], info["pid"], Path(run_dir))

    def endpoint(self, what: str) -> str:
        """ipc:// endpoint of `control`, `results` or an edge name."""
        return f"ipc://{self.dir / what}.sock"

    def shm_name(self, edge: str) -> str:
        return f"edge-pipeline-{self.name}-{self.pid}-{edge}"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.json"

    def create(self, config_json: str) -> None:
        root = runtime_root()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.dir.mkdir(mode=0o700)
        self.config_file.write_text(config_json)
        (self.dir / "run.json").write_text(json.dumps({
            "name": self.name, "pid": self.pid,
            "results": self.endpoint("results"), "control": self.endpoint("control"),
        }))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
