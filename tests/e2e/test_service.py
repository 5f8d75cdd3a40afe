"""Running as a systemd service: the sd_notify messages, checked on a unix datagram socket the
test binds as systemd would (READY only once the model is warm and frames flow, WATCHDOG only
while every stage is healthy, STATUS each second, STOPPING at the end), and the generated unit,
whose command is run the way systemd would run it."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import attach
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.processes import launch, pipeline_cmd


class NotifySocket:
    """What systemd's $NOTIFY_SOCKET receives, with the monotonic time of each datagram."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self.done = False
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def times(self, field: str) -> list[float]:
        return [t for t, fields in self.messages if field in fields]

    def wait_for(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.messages[-5:]}")

    def close(self) -> None:
        self.done = True
        self.thread.join()
        self.sock.close()


def stage_pid(supervisor: int, stage: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"workers.stage --stage {stage} .*--parent {supervisor}"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_notifications_follow_readiness_health_and_stop(tmp_path, clean_machine):
    notify = NotifySocket(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "3000000"}
    # The supervisor's own watchdog off: a frozen stage stays frozen, as a wedged one would.
    proc = launch(pipeline_cmd("demo.toml", "--quiet", "--name", "notifylab", "--set",
                               "model.runtime=onnxruntime", "--set", "supervision.watchdog_s=0"),
                  env=env)
    try:
        ready = notify.wait_for(lambda: notify.times("READY=1"), 10, "READY=1")[0]
        before = [fields for t, fields in notify.messages if t < ready]
        assert before and all(f[0].startswith("STATUS=starting") for f in before), before
        # Ready means classifying: a subscriber gets a result at once.
        with attach("notifylab") as sub:
            assert sub.receive(timeout=5) is not None
        notify.wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 2, 10, "two watchdog pings")
        assert min(notify.times("WATCHDOG=1")) > ready
        line = next(f for _, f in reversed(notify.messages) if "WATCHDOG=1" in f)[1]
        assert line.startswith("STATUS=") and " fps, latency " in line and "drops " in line

        worker = stage_pid(proc.pid, "inference")
        os.kill(worker, signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            stalled = notify.wait_for(lambda: [t for t, f in notify.messages if t > frozen and any(
                "inference stalled" in x for x in f)], 15, "a STATUS naming the stalled worker")[0]
            assert stalled - frozen < 6  # no stats for 3 s (STALLED_AFTER_S) is a stall
            time.sleep(2.5)  # several more seconds of status, all without a ping
            pings = notify.times("WATCHDOG=1")
            assert not [t for t in pings if t >= stalled], "a ping while a stage is stalled"
            assert max(pings) < stalled
        finally:
            os.kill(worker, signal.SIGCONT)
        thawed = time.monotonic()
        notify.wait_for(lambda: [t for t in notify.times("WATCHDOG=1") if t > thawed], 10,
                        "pings again after the stage recovered")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
        time.sleep(0.3)
        stopping = notify.times("STOPPING=1")
        assert len(stopping) == 1 and not [t for t in notify.times("WATCHDOG=1") if t > stopping[0]]
        assert any(x.startswith("STATUS=stopping (SIGTERM)") for _, f in notify.messages for x in f)
        assert len(notify.times("READY=1")) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections, each key with all its values (Environment= repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def unit_for(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(pipeline_cmd("demo.toml", "--set", "model.runtime=onnxruntime", *args),
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


def test_the_unit_runs_this_config_with_this_interpreter_as_systemd_would(tmp_path, clean_machine):
    p = unit_for("--name", "unitlab", "--systemd-unit")
    assert p.returncode == 0, p.stderr
    unit = parse_unit(p.stdout)
    svc = unit["Service"]
    assert svc["Type"] == ["notify"] and svc["Restart"] == ["on-failure"]
    assert int(svc["WatchdogSec"][0]) >= 3 and svc["RestartPreventExitStatus"] == ["2"]
    assert svc["User"] == [getpass.getuser()] and svc["WorkingDirectory"] == [str(ROOT)]
    assert svc["RuntimeDirectory"] == ["edge-pipeline-unitlab"]
    assert "XDG_RUNTIME_DIR=%t/edge-pipeline-unitlab" in svc["Environment"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert int(unit["Unit"]["StartLimitBurst"][0]) >= 3
    command = shlex.split(svc["ExecStart"][0].replace("%%", "%"))
    assert command[0] == sys.executable and str(ROOT / "configs" / "demo.toml") in command
    assert command[command.index("--set") + 1] == "model.runtime=onnxruntime"

    # Started as systemd starts it: the unit's environment, directory and notify socket.
    run = Path(tempfile.mkdtemp(prefix="run", dir="/tmp"))  # %t: short, as /run (sun_path)
    runtime = run / "edge-pipeline-unitlab"
    runtime.mkdir(mode=0o700)
    notify = NotifySocket(str(tmp_path / "notify"))
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(
        int(svc["WatchdogSec"][0]) * 10**6)}
    for assignment in svc["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value.replace("%t", str(run))
    proc = subprocess.Popen(command, cwd=svc["WorkingDirectory"][0], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        notify.wait_for(lambda: notify.times("WATCHDOG=1") or proc.poll() is not None, 60,
                        "READY and a watchdog ping")
        assert proc.poll() is None, proc.communicate()[1]
        assert list(runtime.iterdir()), "the run's sockets live in the RuntimeDirectory"
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert notify.times("STOPPING=1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()
        shutil.rmtree(run)


def test_install_writes_a_user_unit_and_says_how_to_start_it(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    printed = unit_for("--name", "unitlab", "--user", "--systemd-unit", env=env)
    p = unit_for("--name", "unitlab", "--user", "--install", env=env)
    assert p.returncode == 0, p.stderr
    path = tmp_path / "systemd" / "user" / "edge-pipeline-unitlab.service"
    assert path.read_text() == printed.stdout
    assert parse_unit(printed.stdout)["Install"]["WantedBy"] == ["default.target"]
    assert "User" not in parse_unit(printed.stdout)["Service"]  # a user unit runs as its user
    assert f"wrote {path}" in p.stdout
    assert "systemctl --user daemon-reload" in p.stdout
    assert "systemctl --user enable --now edge-pipeline-unitlab.service" in p.stdout


@pytest.mark.parametrize("args, message", [
    (["--user"], "--user goes with --systemd-unit or --install"),
    (["--systemd-unit", "--duration", "5"], "--duration: a service runs until stopped"),
    (["--systemd-unit", "--set", "source.fps=-1"], "source.fps"),
])
def test_unit_mistakes_are_one_line(args, message):
    p = unit_for(*args)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert p.stdout == ""


# video.toml pins its stages to cores 0 and 1: these are the cores this test may use (one, under
# taskset -c N, or a container's cpuset).
THESE_CORES = ("--set", f"capture.cores=[{min(os.sched_getaffinity(0))}]",
               "--set", f"preprocess.cores=[{min(os.sched_getaffinity(0))}]",
               "--set", f"inference.cores=[{max(os.sched_getaffinity(0))}]")


def journal_run(tmp_path: Path, name: str, *args: str, during=None) -> tuple[int, list[str]]:
    """pipeline-up with stderr on a file that JOURNAL_STREAM names, as systemd's journal stream
    would be: its exit code and its stderr lines."""
    log = tmp_path / f"{name}.log"
    with open(log, "w") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.Popen(pipeline_cmd(*args, "--name", name), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            if during:
                during(proc, log)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, log.read_text().splitlines()


def test_journal_lines_are_structured_and_carry_priorities(tmp_path, clean_machine):
    def kill_preprocess(proc: subprocess.Popen, log: Path) -> None:
        deadline = time.monotonic() + 60
        while "status=pipeline" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(stage_pid(proc.pid, "preprocess"), signal.SIGKILL)

    code, lines = journal_run(tmp_path, "journallab", "demo.toml", "--set", "model.runtime=onnxruntime",
                              "--set", "preprocess.restart=on-failure", "--duration", "12",
                              during=kill_preprocess)
    assert code == 0, lines
    status = [line for line in lines if line.startswith("status=pipeline ")]
    assert 2 <= len(status) <= 4, lines  # one every 5 s, not a table every second
    assert not [line for line in lines if line.startswith("[")]  # no timestamps, no padding
    fields = dict(f.split("=", 1) for f in status[-1].split() if "=" in f)
    assert float(fields["fps"]) > 0 and "inference:running" in fields["stages"]
    assert [line for line in lines if line.startswith("<4>stage 'preprocess' died (killed by SIGKILL)")]
    assert any(line.startswith("running: ") for line in lines)  # information: no prefix

    # A stage's own warning (an image that cannot be decoded) and the supervisor's error (a
    # region of interest outside the video's frames).
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    cv2.imwrite(str(folder / "ok.png"), np.zeros((100, 100, 3), np.uint8))
    code, lines = journal_run(tmp_path, "journalwarn", "images.toml", "--set",
                              f"source.path={folder}", "--set", "model.runtime=onnxruntime")
    assert code == 0, lines
    assert [line for line in lines if line.startswith("<4>capture: skipping image")], lines
    code, lines = journal_run(tmp_path, "journalfail", "video.toml", *THESE_CORES, "--set",
                              f"source.path={need(BOTTLE)}", "--set", "source.roi=[600, 0, 100, 100]",
                              "--set", "model.runtime=onnxruntime")
    assert code == 1, lines
    assert lines[-1].startswith("<3>pipeline-up: ") and "source.roi" in lines[-1], lines


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(pipeline_cmd(*args, "--check"), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_check_finds_what_would_stop_a_start_and_starts_nothing(clean_machine):
    before = set(os.listdir("/dev/shm"))
    ok = check("video.toml", "--name", "checklab", *THESE_CORES, "--set", f"source.path={need(BOTTLE)}",
               "--set", "model.runtime=onnxruntime")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[-1].startswith("check: OK") and "PROBLEM" not in ok.stdout
    assert any(x.startswith("source") and "first frame 640x360" in x for x in lines)
    assert any(x.startswith("model") and "on onnxruntime" in x and "ms a frame" in x for x in lines)
    assert any(x.startswith("shm") and "MiB free" in x for x in lines)
    # No ring was made, nothing was started (other pipelines of the machine come and go).
    assert not [s for s in set(os.listdir("/dev/shm")) - before if "checklab" in s]

    bad = check("demo.toml", "--name", "checklab", "--set", "source.kind=\"camera\"", "--set",
                "source.device=\"/dev/video-none\"", "--set", "model.runtime=onnxruntime")
    assert bad.returncode == 1 and "PROBLEM: source.device" in bad.stdout
    assert bad.stdout.splitlines()[-1].startswith("check: 1 problem(s) (files)")

    roi = check("video.toml", "--name", "checklab", *THESE_CORES, "--set", f"source.path={need(BOTTLE)}",
                "--set", "source.roi=[600, 0, 100, 100]", "--set", "model.runtime=onnxruntime")
    assert roi.returncode == 1 and "PROBLEM: source.roi: [600, 0, 100, 100] does not fit" in roi.stdout

    config = check("demo.toml", "--set", "inference.workers=0")
    assert config.returncode == 2 and config.stdout == ""
    assert len(config.stderr.strip().splitlines()) == 1 and "inference.workers" in config.stderr


# --- The unit as systemd reads it -------------------------------------------------------------

SYSTEMD = Path("/lib/systemd/systemd")


def systemd_reads(text: str, unit: str) -> dict[str, list[str]]:
    """The unit as systemd 252+ itself parses it: `systemd-analyze verify` must accept it, and
    `systemd --test` (no running manager needed) loads it from a folder of its own and dumps every
    setting as parsed, the command line as the argv it would execute."""
    if not (SYSTEMD.exists() and shutil.which("systemd-analyze")):
        pytest.skip("systemd is not installed here (apt-get install systemd): cannot check the unit "
                    "with systemd's own parser")
    folder = Path(tempfile.mkdtemp(prefix="units", dir="/tmp"))
    try:
        folder.chmod(0o755)  # systemd --test refuses root: it reads the folder as nobody
        path = folder / unit
        path.write_text(text)
        path.chmod(0o644)
        verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                                capture_output=True, text=True, timeout=120)
        assert verify.returncode == 0 and unit not in verify.stdout + verify.stderr, verify.stderr
        drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
        dump = subprocess.run([*drop, str(SYSTEMD), "--test", "--system", f"--unit={unit}",
                               "--log-target=console", "--log-level=err"],
                              env={"PATH": os.environ["PATH"], "SYSTEMD_UNIT_PATH": f"{folder}:"},
                              capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(folder)
    lines = dump.stdout.splitlines()
    start = lines.index(f"\t-> Unit {unit}:")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("\t-> Unit ")), len(lines))
    settings: dict[str, list[str]] = {}
    for line in lines[start + 1:end]:
        key, sep, value = line.strip().partition(": ")
        if sep:
            settings.setdefault(key, []).append(value)
    return settings


def command_words(line: str) -> list[str]:
    """The argv in systemd's dump ("Command Line: "): words apart by spaces, a word with special
    characters in double quotes, where `\\` escapes the next character (quote_command_line)."""
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        word, quoted = "", line[i] == '"'
        i += quoted
        while i < len(line) and (line[i] != '"' if quoted else line[i] != " "):
            i += quoted and line[i] == "\\"
            word += line[i]
            i += 1
        words.append(word)
        i += quoted
    return words


def at_exec(word: str) -> str:
    """A stored argv word as systemd passes it to the program: `$$` becomes `$`; any other `$`
    would be replaced by a variable (systemd.service(5), "Command lines")."""
    kept = word.replace("$$", "\0")
    assert "$" not in kept, f"systemd would expand a variable in {word!r}"
    return kept.replace("\0", "$")


def test_the_unit_carries_any_path_and_value_exactly_as_systemd_reads_it(tmp_path):
    """Quotes, backslashes, `$` (variables), `%` (specifiers), `;`, spaces and non-ASCII in a
    --set value, in the working directory and in the config's path reach the program unchanged."""
    base = Path(tempfile.mkdtemp(prefix="unit", dir="/tmp"))
    try:
        work = base / "my proj $HOME %h"
        (work / "conf dir %n $USER").mkdir(parents=True)
        config = work / "conf dir %n $USER" / "front door %i.toml"
        shutil.copy(ROOT / "configs" / "demo.toml", config)
        device = "rtsp://127.0.0.1:8554/a b/$HOME/${USER}/%h/$$/\\x/\"q\"/'s'/ ; /é"
        record = work / "out $x %y.jsonl"
        args = [sys.executable, "-m", "pipeline.cli.up", str(config), "--name", "quoting",
                "--set", "source.kind=\"camera\"", "--set", f"source.device={json.dumps(device)}",
                "--set", "source.credentials=\"cam1.cred\"", "--record", str(record)]
        p = subprocess.run([*args, "--systemd-unit"], cwd=work, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        seen = systemd_reads(p.stdout, "edge-pipeline-quoting.service")
        assert seen["WorkingDirectory"] == [str(work)]
        assert seen["Description"] == ["edge-pipeline quoting: real-time classification "
                                       "(front door %i.toml)"]
        words = [at_exec(w) for w in command_words(seen["Command Line"][0])]
        assert words == args
        assert "XDG_RUNTIME_DIR=/run/edge-pipeline-quoting" in seen["Environment"]
        # Not in systemd 252's dump; verify above checks the line, which takes specifiers only.
        credential = str(work / "cam1.cred").replace("%", "%%")
        assert parse_unit(p.stdout)["Service"]["LoadCredential"] == [f"cam1.cred:{credential}"]
    finally:
        shutil.rmtree(base)


def _unit_in(cwd: Path, config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("case", ["newline in --set", "newline in the config's folder", "tab in --set",
                                  "working directory ending in a backslash", "password in a URL",
                                  "token in a URL's query", "no such user"])
def test_what_a_unit_cannot_carry_is_refused_in_one_line(case, tmp_path):
    """A line break would put a setting of its own (`ExecStartPre=` of a unit run as root) into
    [Service]; a credential would be readable by every user; a user that does not exist."""
    cwd, config = tmp_path, ROOT / "configs" / "images.toml"
    args = ["--set", "source.path=photos"]  # images.toml leaves the photos to the user
    env = None
    if case == "newline in --set":
        args = ["--set", "source.path=/x\nExecStartPre=/tmp/evil"]
    elif case == "newline in the config's folder":
        folder = tmp_path / "x\nExecStartPre=" / "tmp"
        folder.mkdir(parents=True)
        config = Path(shutil.copy(config, folder / "evil"))
    elif case == "tab in --set":
        args = ["--set", "source.path=/x\ty"]
    elif case == "working directory ending in a backslash":
        cwd = tmp_path / "proj\\"
        cwd.mkdir()
    elif case == "password in a URL":
        config = ROOT / "configs" / "demo.toml"
        args = ["--set", 'source.kind="camera"', "--set", 'source.device="rtsp://admin:s3cret@cam/1"']
    elif case == "token in a URL's query":
        config = ROOT / "configs" / "demo.toml"
        args = ["--set", 'source.kind="camera"', "--set", 'source.device="rtsp://cam/1?token=s3cret"']
    else:
        env = {**os.environ, "LOGNAME": "nosuchuser"}
    p = _unit_in(cwd, config, *args, "--systemd-unit", env=env)
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "s3cret" not in p.stderr
    expected = {"password in a URL": "credentials", "token in a URL's query": "credentials",
                "no such user": "'nosuchuser'"}.get(case, "control character")
    if case == "working directory ending in a backslash":
        expected = "backslash"
    assert expected in p.stderr, p.stderr
    if case.startswith("password") or case.startswith("token"):
        assert "chmod 600" in p.stderr  # where a camera's password goes instead


def test_install_keeps_a_unit_edited_by_hand_and_follows_no_link(tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    folder = tmp_path / "config" / "systemd" / "user"
    folder.mkdir(parents=True)
    unit = folder / "edge-pipeline-unitlab.service"
    victim = tmp_path / "victim"
    victim.write_text("not a unit\n")
    (folder / f"{unit.name}.new").symlink_to(victim)  # a link planted where a fixed name was written
    printed = unit_for("--name", "unitlab", "--user", "--systemd-unit", env=env).stdout

    first = unit_for("--name", "unitlab", "--user", "--install", env=env)
    assert first.returncode == 0 and f"wrote {unit}" in first.stdout, first.stderr
    assert unit.read_text() == printed and not unit.is_symlink()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert victim.read_text() == "not a unit\n"
    assert sorted(os.listdir(folder)) == sorted([unit.name, f"{unit.name}.new"])  # no temp file left

    again = unit_for("--name", "unitlab", "--user", "--install", env=env)
    assert again.returncode == 0 and f"unchanged: {unit}" in again.stdout

    edited = printed.replace("RestartSec=5", "RestartSec=30")
    unit.write_text(edited)
    kept = unit_for("--name", "unitlab", "--user", "--install", env=env)
    assert kept.returncode == 1 and kept.stdout == "" and len(kept.stderr.strip().splitlines()) == 1
    assert "differs" in kept.stderr and "--force" in kept.stderr
    assert unit.read_text() == edited

    unit.unlink()
    unit.symlink_to(victim)  # a link in the unit's place is replaced, never written through
    assert unit_for("--name", "unitlab", "--user", "--install", env=env).returncode == 1
    forced = unit_for("--name", "unitlab", "--user", "--install", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert not unit.is_symlink() and unit.read_text() == printed
    assert victim.read_text() == "not a unit\n"
    assert sorted(os.listdir(folder)) == sorted([unit.name, f"{unit.name}.new"])


# --- Finding a pipeline run by the unit --------------------------------------------------------

def _runtime_base(kind: str) -> tuple[Path, bool]:
    """%t of a system unit (/run) or of a user unit (the user manager's /run/user/UID), and
    whether the test made it (as logind would: only where none is, as root)."""
    if kind == "system":
        if os.geteuid() != 0:
            pytest.skip("a system unit's RuntimeDirectory is made in /run by systemd as root")
        return Path("/run"), False
    base = Path(f"/run/user/{os.getuid()}")
    if base.is_dir():
        return base, False
    if os.geteuid() != 0:
        pytest.skip(f"{base} (made by logind at login) does not exist here")
    base.mkdir(mode=0o700, parents=True)
    return base, True


@pytest.mark.parametrize("kind", ["system", "user"])
def test_a_pipeline_run_by_the_unit_is_found_from_an_ordinary_shell(kind, tmp_path, monkeypatch,
                                                                    clean_machine):
    """pipeline-top, pipeline-attach (and --list), pipeline-trace and attach() find it with
    nothing exported, from a shell with or without a login's XDG_RUNTIME_DIR."""
    name = f"svcfind{kind}"
    p = unit_for("--name", name, "--quiet", "--systemd-unit", *(["--user"] if kind == "user" else []))
    assert p.returncode == 0, p.stderr
    svc = parse_unit(p.stdout)["Service"]
    command = shlex.split(svc["ExecStart"][0].replace("%%", "%"))
    base, made = _runtime_base(kind)
    runtime = base / svc["RuntimeDirectory"][0]
    runtime.mkdir(mode=0o700)  # RuntimeDirectory=, RuntimeDirectoryMode=0700, as systemd does
    notify = NotifySocket(str(tmp_path / "notify"))
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": notify.path}
    for assignment in svc["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value.replace("%t", str(base))
    planted = Path("/run/edge-pipeline-planted")
    log = open(tmp_path / "service.log", "w")
    proc = subprocess.Popen(command, cwd=svc["WorkingDirectory"][0], env=env, stdout=log, stderr=log)
    try:
        notify.wait_for(lambda: notify.times("READY=1") or proc.poll() is not None, 120, "READY=1")
        assert proc.poll() is None, (tmp_path / "service.log").read_text()

        plain = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        shells = [plain] + ([{**plain, "XDG_RUNTIME_DIR": str(base)}] if kind == "user" else [])
        for shell in shells:
            def run(module: str, *args: str) -> subprocess.CompletedProcess:
                return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=shell,
                                      capture_output=True, text=True, timeout=120)

            top = run("pipeline.cli.top", "--name", name, "--once", "--json")
            assert top.returncode == 0, top.stderr
            assert json.loads(top.stdout)["stages"]
            listing = run("pipeline.cli.attach", "--list")
            assert listing.returncode == 0 and name in listing.stdout, listing.stdout
            assert f"status: ipc://{runtime}/" in listing.stdout
            got = run("pipeline.cli.attach", "--name", name, "--format", "jsonl", "--count", "3")
            assert got.returncode == 0, got.stderr
            assert [json.loads(line)["seq"] >= 0 for line in got.stdout.splitlines()] == [True] * 3
            trace = run("pipeline.cli.trace", "--name", name, "--seconds", "2", "--out",
                        str(tmp_path / "trace.json"))
            assert trace.returncode == 0, trace.stderr
            assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        with attach(name) as sub:
            assert sub.receive(timeout=10) is not None

        if kind == "system":  # only a private directory of ours is trusted there
            entry = json.loads(next(runtime.glob("*/*/run.json")).read_text())
            (planted / f"edge-pipeline-{os.getuid()}" / "planted-1").mkdir(parents=True, mode=0o700)
            (planted / f"edge-pipeline-{os.getuid()}" / "planted-1" / "run.json").write_text(
                json.dumps({**entry, "name": "planted"}))
            for mode, owner in ((0o755, os.getuid()), (0o700, 65534)):
                os.chown(planted / f"edge-pipeline-{os.getuid()}", owner, -1)
                os.chmod(planted / f"edge-pipeline-{os.getuid()}", mode)
                listing = subprocess.run([sys.executable, "-m", "pipeline.cli.attach", "--list"],
                                         env=plain, capture_output=True, text=True, timeout=60)
                assert name in listing.stdout and "planted" not in listing.stdout, listing.stdout

        proc.send_signal(signal.SIGTERM)  # systemctl stop
        proc.wait(timeout=30)
        assert proc.returncode == 0, (tmp_path / "service.log").read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the supervisor stops its stages
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        notify.close()
        shutil.rmtree(runtime, ignore_errors=True)  # systemd removes it when the service stops
        shutil.rmtree(planted, ignore_errors=True)
        if made:
            shutil.rmtree(base, ignore_errors=True)
