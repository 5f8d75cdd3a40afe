"""Where a running pipeline instance keeps its sockets and shared memory.

Every name carries the pipeline's name and the supervisor's pid, so two instances never collide and
everything one instance made can be found and removed by that prefix.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_IN = "results-in"  # inference workers publish here; the supervisor's hub republishes


class NotRunning(LookupError):
    """No running pipeline matches; the message lists what does run."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def supervisor_alive(pid: int) -> bool:
    """Whether `pid` is still a pipeline supervisor (not gone, nor reused by another program)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pipeline" in cmd


def running_pipelines() -> list[dict[str, Any]]:
    """Discovery entries of the pipelines running now, oldest first. Entries whose supervisor
    is gone are stale: they are removed on sight."""
    found = []
    root = runtime_root()
    for entry in sorted(root.glob("*/run.json")) if root.is_dir() else []:
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if supervisor_alive(int(info.get("pid", -1))):
            info["dir"] = str(entry.parent)
            found.append(info)
        else:
            shutil.rmtree(entry.parent, ignore_errors=True)
    return sorted(found, key=lambda i: i["started_at"])


def find_pipeline(name: str | None = None) -> dict[str, Any]:
    """The running pipeline called `name`, or the only one running when `name` is None. A
    pipeline split over hosts runs one supervisor per host: the one with results is chosen."""
    running = running_pipelines()
    with_results = [i for i in running if i["endpoints"].get("results")]
    if name is None and len(with_results) == 1 and len({i["name"] for i in running}) == 1:
        return with_results[0]
    listing = ", ".join(f"{i['name']} (pid {i['pid']})" for i in running) or "none"
    if name is None:
        if len(running) == 1:
            return running[0]
        if not running:
            raise NotRunning("no pipeline is running (start one with pipeline-up)")
        raise NotRunning(f"{len(running)} pipelines are running, name one with --name: {listing}")
    matches = [i for i in running if i["name"] == name]
    if not matches:
        raise NotRunning(f"no pipeline named '{name}' is running (running: {listing})")
    return ([i for i in matches if i["endpoints"].get("results")] or matches)[-1]


def runtime_root() -> Path:
    """Per-user directory (mode 0700) holding one sub-directory per running pipeline."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"edge-pipeline-{os.getuid()}"


class NameLock:
    """The pipeline's name on this machine, held for the supervisor's life: an flock the kernel
    drops when the process ends, however it ends, so two pipelines started at the same moment
    cannot both take one name. The halves of a pipeline split over hosts may share a machine: a
    host's half holds the name shared and its host exclusively; a whole pipeline, exclusively."""

    def __init__(self, name: str, host: str | None):
        self.name, self.host = name, host
        self._fds: list[int] = []

    def acquire(self) -> bool:
        """Take the name; False if another pipeline holds it."""
        root = runtime_root()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        wanted = [(f"{self.name}.lock", fcntl.LOCK_EX if self.host is None else fcntl.LOCK_SH)]
        if self.host is not None:
            wanted.append((f"{self.name}@{self.host}.lock", fcntl.LOCK_EX))
        for file, mode in wanted:
            fd = os.open(root / file, os.O_RDWR | os.O_CREAT, 0o600)
            self._fds.append(fd)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                self.release()
                return False
        return True

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # drops the lock
        self._fds.clear()


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

    def info(self) -> dict[str, Any]:
        return json.loads((self.dir / "run.json").read_text())

    def endpoint(self, what: str) -> str:
        """ipc:// endpoint of `control`, `results` or an edge name."""
        return f"ipc://{self.dir / what}.sock"

    def shm_name(self, edge: str) -> str:
        return f"edge-pipeline-{self.name}-{self.pid}-{edge}"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.json"

    @property
    def model_plan_file(self) -> Path:
        """The runtime and model file every inference worker loads (workers/inference/model_plan.py)."""
        return self.dir / "model.json"

    def create(self, config_json: str, *, host: str | None, stages: list[str],
               rings: dict[str, str], results: bool) -> None:
        """Make the instance's directory and its discovery entry (run.json): which host of the
        topology this is, its stage processes, and the ring holding each source's frames here."""
        root = runtime_root()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.dir.mkdir(mode=0o700)
        self.config_file.write_text(config_json)
        info = {
            "name": self.name, "pid": self.pid, "started_at": time.time(), "host": host,
            "endpoints": {w: self.endpoint(w) for w in ("status", "control")},
            "rings": rings, "stages": stages, "config": json.loads(config_json),
        }
        if results:
            info["endpoints"]["results"] = self.endpoint("results")
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        tmp.rename(self.dir / "run.json")  # readers never see half an entry

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
