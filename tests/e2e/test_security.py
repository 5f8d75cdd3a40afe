"""Other local users: a ring planted under a run's name, a runtime directory made by someone else,
their segments in /dev/shm, and a stale discovery entry whose pid now belongs to another program.

Tests that need a second user run as root and act as `nobody` (uid 65534), with chown or setpriv.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.supervisor.shm import orphaned_segments, others_segments
from pipeline.transport.ring import Ring, RingRefused, shm_path
from pipeline.transport.rundir import process_start, running_pipelines, segment_name, supervisor_alive
from tests.support.assets import ROOT

NOBODY = 65534
TOKEN = 0x5EC12E7
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
DEAD_PID = 999_999_999  # above any pid_max: no process has it


def _second_user_missing() -> str | None:
    """Why tests cannot act as a second user here, or None."""
    if os.geteuid() != 0:
        return "needs root to act as a second user"
    try:
        import pwd

        pwd.getpwuid(NOBODY)
    except KeyError:
        return f"no user with uid {NOBODY}"
    return None


@pytest.fixture(scope="module")
def other_user():
    """Files may be given to uid 65534 (chown)."""
    reason = _second_user_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def as_nobody(other_user):
    """The command prefix that runs a program as uid 65534 (skips if this venv cannot run so)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    p = subprocess.run([*SETPRIV, sys.executable, "-c", "import pipeline.supervisor.shm"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot run {sys.executable}: {p.stderr.strip()[-200:]}")
    return SETPRIV


def _segment(pid: int, start: int):
    n = segment_name(f"sec{uuid.uuid4().hex[:8]}", pid, start, "frames")
    yield n
    if os.path.lexists(shm_path(n)):
        os.unlink(shm_path(n))


@pytest.fixture
def name():
    """A unique segment name in the pipeline's format, of a running "supervisor" (this process,
    so no pipeline started meanwhile takes it for an orphan); removed afterwards."""
    yield from _segment(os.getpid(), process_start(os.getpid()))


@pytest.fixture
def orphan_name():
    """A unique segment name of a supervisor that runs nowhere; removed afterwards."""
    yield from _segment(DEAD_PID, 1)


@pytest.fixture
def base():
    """A base for XDG_RUNTIME_DIR that uid 65534 can reach too (pytest's tmp_path is not
    reachable by it); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="edge-sec-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in changes.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    return env


def _plant(name: str, uid: int | None = None, mode: int = 0o600, token: int = TOKEN) -> None:
    """A ring with a valid header at `name`, made over to `uid` with `mode`."""
    Ring.create(name, 3, 1000, token=token).close()
    if uid is not None:
        os.chown(shm_path(name), uid, uid)
    os.chmod(shm_path(name), mode)


def _cli(command: str, *args: str, env: dict[str, str], user: list[str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*(user or []), sys.executable, "-m", f"pipeline.cli.{command}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _written(name: str) -> int:
    """Frames a ring's header says were written, read without any check (a test's look)."""
    with open(shm_path(name), "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        return int.from_bytes(mm[4 * 8:5 * 8], "little")


# 1. A ring planted under the name a stage will use ------------------------------------------------

def test_a_ring_of_another_user_is_neither_written_nor_read(name, other_user):
    _plant(name, uid=NOBODY, mode=0o666)  # world-writable, valid header, even the right token
    with pytest.raises(RingRefused, match=rf"^shared memory /dev/shm/{name} belongs to uid "
                                          rf"{NOBODY}, not to this user \(uid 0\): refusing to use it"):
        Ring.open_for_writing(name, 3, 1000, TOKEN)
    with pytest.raises(RingRefused, match=f"belongs to uid {NOBODY}"):
        Ring.attach(name, readonly=True)  # a consumer would show frames the other user made
    assert not Ring.unlink(name) and os.stat(shm_path(name)).st_uid == NOBODY  # theirs to remove


def test_a_writer_takes_over_only_a_private_ring_of_its_own_run(name):
    _plant(name, mode=0o666)
    with pytest.raises(RingRefused, match=r"is open to other users \(mode 0666, not 0600\)"):
        Ring.open_for_writing(name, 3, 1000, TOKEN)
    os.chmod(shm_path(name), 0o600)
    with pytest.raises(RingRefused, match="was not made by this run"):
        Ring.open_for_writing(name, 3, 1000, TOKEN + 1)
    ring = Ring.open_for_writing(name, 3, 1000, TOKEN)  # a restarted stage of the same run
    assert ring.slots == 3 and not ring.owner
    ring.close()


def test_a_symlink_or_fifo_under_a_ring_name_is_refused_without_blocking(name, tmp_path):
    target = tmp_path / "target"
    target.write_bytes(bytes(8192))
    os.symlink(target, shm_path(name))
    with pytest.raises(RingRefused, match="is a symbolic link"):
        Ring.open_for_writing(name, 3, 1000, TOKEN)
    assert target.read_bytes() == bytes(8192)
    os.unlink(shm_path(name))
    os.mkfifo(shm_path(name), 0o600)
    with pytest.raises(RingRefused, match="is not a regular file"):
        Ring.attach(name, readonly=True)  # a plain open() of a FIFO would block for ever


def test_a_refusal_is_a_user_error_so_a_stage_reports_it_as_its_one_line():
    assert issubclass(RingRefused, UserError) and issubclass(RingRefused, ValueError)


def test_a_ring_planted_where_capture_will_write_stops_the_run_with_one_line(tmp_path, other_user,
                                                                             clean_machine):
    """End to end: a supervisor's pid and start time are known before it runs (exec keeps both),
    so the frames ring is planted exactly where the run's stages will look for it."""
    pipeline = f"sec{uuid.uuid4().hex[:6]}"
    script = tmp_path / "plant_then_exec.py"
    script.write_text(f"""
import os, sys
from pipeline.transport.ring import Ring
from pipeline.transport.rundir import process_start, segment_name
name = segment_name({pipeline!r}, os.getpid(), process_start(os.getpid()), "frames")
Ring.create(name, 4, 640 * 480 * 3).close()
os.chown("/dev/shm/" + name, {NOBODY}, {NOBODY})
os.chmod("/dev/shm/" + name, 0o666)
print(name, flush=True)
os.execv(sys.executable, [sys.executable, "-m", "pipeline.cli.up", "configs/demo.toml",
         "--name", {pipeline!r}, "--set", "model.weights=none", "--quiet", "--duration", "60"])
""")
    p = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
    planted = p.stdout.splitlines()[0]
    try:
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        failed = [line for line in p.stderr.splitlines() if " failed: " in line]
        assert failed and all(re.fullmatch(
            rf"pipeline-up: stage '(capture|preprocess)' failed: shared memory /dev/shm/{planted} "
            rf"belongs to uid {NOBODY}, not to this user \(uid 0\): refusing to use it; remove it "
            r"or stop the program that made it", line) for line in failed), p.stderr
        assert os.stat(shm_path(planted)).st_uid == NOBODY  # left to its owner
        assert _written(planted) == 0  # not one camera frame went into it
    finally:
        os.unlink(shm_path(planted))


# 2. A runtime directory that is not ours --------------------------------------------------------

COMMANDS = [("up", str(ROOT / "configs" / "demo.toml"), "--set", "model.weights=none",
             "--duration", "1"),
            ("attach", "--list"), ("attach", "--count", "1"), ("top", "--once"),
            ("trace", "--seconds", "1", "--out", "{base}/trace.json"), ("clean",),
            ("clean", "--dry-run")]


def _bad_runtime_dir(base: Path, kind: str) -> tuple[Path, str]:
    """The runtime directory as a hostile or careless setup leaves it, and the problem named."""
    root = base / f"edge-pipeline-{os.getuid()}"
    if kind == "another user's":
        root.mkdir(mode=0o700)
        os.chown(root, NOBODY, NOBODY)
        return root, f"is owned by uid {NOBODY}, not you (uid 0)"
    if kind == "symlink":
        (base / "elsewhere").mkdir(mode=0o700)
        root.symlink_to(base / "elsewhere")
        return root, "is a symbolic link"
    if kind == "open to all":
        root.mkdir()
        os.chmod(root, 0o777)
        return root, "is open to other users (mode 0777, not 0700)"
    root.write_text("")
    return root, "is not a directory"


@pytest.mark.parametrize("kind", ["another user's", "symlink", "open to all", "file"])
def test_every_command_refuses_a_runtime_directory_that_is_not_private_in_one_line(
        kind, base, request):
    if kind == "another user's":
        request.getfixturevalue("other_user")
    root, problem = _bad_runtime_dir(base, kind)
    before = sorted(p.name for p in base.rglob("*"))
    # The literal case: no XDG_RUNTIME_DIR, the directory in the temporary directory.
    env = _env(XDG_RUNTIME_DIR=None, TMPDIR=str(base))
    for command, *args in COMMANDS:
        p = _cli(command, *(a.format(base=base) for a in args), env=env)
        assert p.returncode != 0, (command, p.stdout, p.stderr)
        assert p.stderr.strip() == (f"pipeline-{command}: runtime directory {root} {problem}: "
                                    "remove it or set XDG_RUNTIME_DIR"), (command, p.stderr)
    assert sorted(p.name for p in base.rglob("*")) == before  # nothing made in it, or beside it


# 3. Segments of other users ---------------------------------------------------------------------

def test_clean_leaves_other_users_segments_and_says_so_once(orphan_name, base, other_user):
    name = orphan_name
    _plant(name, uid=NOBODY)  # looks orphaned: its supervisor pid runs nowhere
    assert name in others_segments() and name not in orphaned_segments()
    p = _cli("clean", env=_env(XDG_RUNTIME_DIR=str(base)))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    notes = [line for line in p.stderr.splitlines() if "of other users" in line]
    assert len(notes) == 1 and re.fullmatch(
        r"pipeline-clean: skipped \d+ shared-memory segment\(s\) of other users", notes[0]), p.stderr
    assert f"/dev/shm/{name}" not in p.stdout and os.path.exists(shm_path(name))


def test_another_user_cleans_and_starts_beside_our_segments(orphan_name, base, as_nobody):
    """A segment of a third user (of a supervisor that runs nowhere) must neither break a user's
    pipeline-clean or pipeline-up preflight, nor be judged by them. (A third user rather than
    root: a pipeline that root starts meanwhile would rightly take root's for an orphan.)"""
    name = orphan_name
    _plant(name, uid=NOBODY - 1)
    os.chown(base, NOBODY, NOBODY)
    env = _env(XDG_RUNTIME_DIR=str(base), HOME=str(base))
    p = _cli("clean", env=env, user=as_nobody)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert re.search(r"^pipeline-clean: skipped \d+ shared-memory segment\(s\) of other users$",
                     p.stderr, re.M), p.stderr
    assert os.path.exists(shm_path(name))
    preflight = ("from pipeline.config import load_config; from pipeline.supervisor.startup "
                 "import refusal; print(refusal(load_config(None, ['model.weights=none', "
                 "'name=secnobody']), None, print))")
    p = subprocess.run([*as_nobody, sys.executable, "-c", preflight], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "None", p.stderr  # free to start
    assert os.path.exists(shm_path(name))


# 15. A pid reused by another program ------------------------------------------------------------

@pytest.fixture
def impostor():
    """A live process whose command line mentions "pipeline", as a reused pid's may."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "pipeline"])
    yield p
    p.kill()
    p.wait()


def _entry(base: Path, name: str, pid: int, start: int) -> Path:
    """A discovery entry like the one a killed supervisor leaves."""
    run_dir = base / f"edge-pipeline-{os.getuid()}" / f"{name}-{pid}"
    run_dir.mkdir(parents=True, mode=0o700)
    os.chmod(run_dir.parent, 0o700)
    (run_dir / "run.json").write_text(json.dumps({
        "name": name, "pid": pid, "start": start, "token": TOKEN, "started_at": 0, "host": None,
        "endpoints": {w: f"ipc://{run_dir}/{w}.sock" for w in ("status", "control", "results")},
        "rings": {}, "stages": [], "config": {}}))
    return run_dir


def test_the_start_time_is_read_after_the_last_parenthesis(tmp_path):
    odd = tmp_path / "x) y (z"  # the command name as /proc/PID/stat shows it
    odd.symlink_to(shutil.which("sleep"))
    p = subprocess.Popen([str(odd), "60"])
    try:
        start = process_start(p.pid)
        ticks_now = float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")
        assert start is not None and process_start(os.getpid()) <= start <= ticks_now + 1
        assert supervisor_alive(p.pid, start) and not supervisor_alive(p.pid, start + 1)
        assert not supervisor_alive(p.pid, None)
    finally:
        p.kill()
        p.wait()
    assert process_start(p.pid) is None and not supervisor_alive(p.pid, start)


def test_a_stale_entry_of_a_reused_pid_is_not_taken_for_a_running_pipeline(impostor, base,
                                                                           monkeypatch):
    start = process_start(impostor.pid)
    ghost = f"ghost{uuid.uuid4().hex[:6]}"
    stale = _entry(base, ghost, impostor.pid, start + 1)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    assert all(i["name"] != ghost for i in running_pipelines()) and not stale.exists()
    _entry(base, ghost, impostor.pid, start + 1)
    p = _cli("attach", "--name", ghost, env=_env(XDG_RUNTIME_DIR=str(base)))  # it used to hang
    assert p.returncode == 1
    assert p.stderr.strip() == f"pipeline-attach: no pipeline named '{ghost}' is running (running: none)"
    live = _entry(base, ghost, impostor.pid, start)  # the same pid, its real start: running
    assert [i["name"] for i in running_pipelines()] == [ghost] and live.exists()


def test_clean_removes_segments_of_a_reused_pid_and_keeps_the_live_ones(impostor, base,
                                                                        clean_machine):
    start = process_start(impostor.pid)
    tag = f"sec{uuid.uuid4().hex[:6]}"
    stale = segment_name(tag, impostor.pid, start + 1, "frames")
    live = segment_name(tag, impostor.pid, start, "frames")
    Ring.create(stale, 2, 100).close()
    Ring.create(live, 2, 100).close()
    try:
        orphans = orphaned_segments()
        assert stale in orphans and live not in orphans
        p = _cli("clean", env=_env(XDG_RUNTIME_DIR=str(base)))
        assert p.returncode == 0, p.stderr
        # (a pipeline started beside the tests may have removed the orphan first)
        assert f"/dev/shm/{live}" not in p.stdout
        assert not os.path.exists(shm_path(stale)) and os.path.exists(shm_path(live))
    finally:
        Ring.unlink(stale)
        Ring.unlink(live)
