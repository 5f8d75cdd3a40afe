"""Where a running pipeline instance keeps its sockets and shared memory.

Every name carries the pipeline's name and the supervisor's pid, so two instances never collide and
everything one instance made can be found and removed by that prefix. A pid alone does not say
whether that supervisor still runs (pids are reused), so the supervisor's start time (field 22 of
/proc/PID/stat) goes with it: in run.json and in every segment name.

The runtime directory is used only if it is a private directory of ours (like ssh-agent's and
tmux's): another user who made it first would otherwise see, or for root control, a live run.
Pipelines are looked for there and in the run directories of the project's systemd units (their
environment differs from a shell's), under the same rule.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

SOCKET_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL
RESULTS_IN = "results-in"  # inference workers publish here; the supervisor's hub republishes
SERVICE_DIR_PREFIX = "edge-pipeline-"  # a systemd unit's RuntimeDirectory: this and the name


class NotRunning(LookupError):
    """No running pipeline matches; the message lists what does run."""


class RuntimeDirError(UserError):
    """The runtime directory exists but is not a private directory of this user."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), None if there is no such process:
    with the pid, it names one process for good. Read from its main thread's entry: qemu-user
    (an emulated Pi) fakes the start time a process reads of itself in /proc/PID/stat only."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: count after the last ')'
        return int(fields[fields.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def supervisor_alive(pid: int, start: int | None) -> bool:
    """Whether the supervisor that started at `start` as `pid` still runs (not gone, nor its
    pid reused by another process). Takes what run.json holds, checked here."""
    return type(pid) is int and pid > 0 and type(start) is int and process_start(pid) == start


def running_pipelines() -> list[dict[str, Any]]:
    """Discovery entries of the pipelines running now, oldest first. Entries whose supervisor
    is gone are stale: they are removed on sight."""
    found = []
    for entry in sorted(e for root in runtime_roots() for e in root.glob("*/run.json")):
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and supervisor_alive(info.get("pid"), info.get("start")):
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


def runtime_root(create: bool = False) -> Path:
    """Per-user directory (mode 0700) holding one sub-directory per running pipeline, made if
    `create`. RuntimeDirError if it exists and is not a directory of ours that only we may use."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    root = Path(base) / f"edge-pipeline-{os.getuid()}"
    if create:
        try:
            root.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass  # checked below: whoever made it
    problem = _not_private(root)
    if problem:
        raise RuntimeDirError(f"runtime directory {root} {problem}: remove it or set XDG_RUNTIME_DIR")
    return root


def _not_private(root: Path) -> str | None:
    """Why `root` is not a private directory of ours (None if it is, or if it does not exist)."""
    try:
        st = os.lstat(root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    me = os.geteuid()
    return ("is a symbolic link" if stat.S_ISLNK(st.st_mode) else
            "is not a directory" if not stat.S_ISDIR(st.st_mode) else
            f"is owned by uid {st.st_uid}, not you (uid {me})" if st.st_uid != me else
            f"is open to other users (mode {stat.S_IMODE(st.st_mode):04o}, not 0700)"
            if st.st_mode & 0o077 else None)


def service_roots() -> list[Path]:
    """The runtime roots of this user's pipelines run by the project's systemd units: each unit
    runs its pipeline in its own RuntimeDirectory, `%t/edge-pipeline-NAME` (cli/service.py), where
    %t is /run for a system unit and the user manager's $XDG_RUNTIME_DIR (/run/user/UID) for a
    user unit. Only private directories of ours count, as for runtime_root."""
    uid = os.getuid()
    bases = {"/run", f"/run/user/{uid}", os.environ.get("XDG_RUNTIME_DIR") or "/run"}
    found = [root for base in sorted(bases)
             for root in Path(base).glob(f"{SERVICE_DIR_PREFIX}*/edge-pipeline-{uid}")]
    return sorted(root for root in found if _not_private(root) is None and root.is_dir())


def runtime_roots() -> list[Path]:
    """Every runtime root where a pipeline of this user may run: this environment's
    (runtime_root) and the services' (service_roots); RuntimeDirError as runtime_root."""
    roots = {str(root): root for root in [runtime_root(), *service_roots()]}
    return [root for root in roots.values() if root.is_dir()]


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
        root = runtime_root(create=True)
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


def segment_name(name: str, pid: int, start: int, edge: str) -> str:
    """/dev/shm name of a run's ring: `edge-pipeline-NAME-PID-START.EDGE`. Names and source ids
    have no '.', so the first '.' ends the supervisor's pid and start time however they read."""
    return f"edge-pipeline-{name}-{pid}-{start}.{edge}"


@dataclass(frozen=True)
class RunPaths:
    name: str
    pid: int
    dir: Path
    start: int  # the supervisor's start time: with the pid, names it for good
    # random, stamped in every ring of the run: only a ring bearing it is taken over. Below 2^53,
    # so a JSON reader that parses numbers as doubles (JavaScript) reads it exactly.
    token: int

    @classmethod
    def for_instance(cls, name: str, pid: int) -> "RunPaths":
        """A new run of supervisor `pid` (a running process), with a fresh token."""
        start = process_start(pid)
        if start is None:
            raise ValueError(f"no process {pid}")
        return cls(name, pid, runtime_root() / f"{name}-{pid}", start, secrets.randbits(53) or 1)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "RunPaths":
        info = json.loads((Path(run_dir) / "run.json").read_text())
        return cls(info["name"], info["pid"], Path(run_dir), info["start"], info["token"])

    def info(self) -> dict[str, Any]:
        return json.loads((self.dir / "run.json").read_text())

    def endpoint(self, what: str) -> str:
        """ipc:// endpoint of `control`, `results` or an edge name."""
        return f"ipc://{self.dir / what}.sock"

    def shm_name(self, edge: str) -> str:
        return segment_name(self.name, self.pid, self.start, edge)

    @property
    def result_seq_file(self) -> Path:
        """The counter inference workers draw consecutive result numbers from."""
        return self.dir / "result_seq"

    def drops_file(self, stage: str) -> Path:
        """A stage process's drop counters (pipeline/observe/tally.py)."""
        return self.dir / f"{stage}.drops"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.json"

    @property
    def model_plan_file(self) -> Path:
        """The runtime and model file every inference worker loads (workers/inference/model_plan.py)."""
        return self.dir / "model.json"

    def too_long(self, sockets: list[str]) -> str | None:
        """None if every socket path fits a unix socket address, else the one-line refusal."""
        path = max((self.endpoint(s).removeprefix("ipc://") for s in sockets), key=len)
        if len(path.encode()) <= SOCKET_PATH_MAX:
            return None
        return (f"socket path {path} is {len(path.encode())} bytes, more than the "
                f"{SOCKET_PATH_MAX} a unix socket allows: set XDG_RUNTIME_DIR to a shorter "
                "directory, or shorten the pipeline's name or its sources' ids")

    def create(self, config_json: str, *, host: str | None, stages: list[str],
               rings: dict[str, str], results: bool, model_cores: list[int]) -> None:
        """Make the instance's directory and its discovery entry (run.json): which host of the
        topology this is, its stage processes, the ring holding each source's frames here, and
        the model's cores (consumers leave them before importing anything heavy)."""
        runtime_root(create=True)
        self.dir.mkdir(mode=0o700)
        self.config_file.write_text(config_json)
        info = {
            "name": self.name, "pid": self.pid, "start": self.start, "token": self.token,
            "started_at": time.time(), "host": host, "dir": str(self.dir),
            "endpoints": {w: self.endpoint(w) for w in ("status", "control")},
            "rings": rings, "stages": stages, "model_cores": model_cores,
            "config": json.loads(config_json),
        }
        if results:
            info["endpoints"]["results"] = self.endpoint("results")
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        tmp.rename(self.dir / "run.json")  # readers never see half an entry

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
