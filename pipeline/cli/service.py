"""A systemd unit for a config, so a Pi classifies for months without a hand-written unit (the
usual failures: the wrong user, interpreter or working directory, and "Start request repeated
too quickly" after a config error).

`pipeline-up CONFIG --systemd-unit` prints it; `--install` writes it (`--user` for a user unit)
and says how to enable and start it. The unit runs this interpreter (this venv) on this config
(absolute path, the same `--set` overrides), as this user, in this directory, with:
`Type=notify` (started once the model is warm and frames flow), `WatchdogSec=` (a wedged pipeline
stops pinging and is restarted), `Restart=on-failure` but not after a config error (exit 2), a
start limit that leaves room for the restarts, and a private `RuntimeDirectory` for the run's
sockets.
"""

from __future__ import annotations

import getpass
import grp
import os
import pwd
import sys
from pathlib import Path

from pipeline.config import CameraSource, Config
from pipeline.config.schema import Picamera2Source
from pipeline.errors import UserError

# The supervisor pings each second while every stage runs; a stage it restarts (back-off up to
# 10 s, then a model reload) pauses the pings, so this leaves room for one restart.
WATCHDOG_S = 60
START_TIMEOUT_S = 600  # a large torch model loads and warms up before READY on a Pi
SYSTEM_DIR = Path("/etc/systemd/system")


def unit_name(config: Config) -> str:
    return f"edge-pipeline-{config.name}.service"


def _quote(arg: str) -> str:
    """One ExecStart argument: systemd splits on spaces and expands % specifiers."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in ' \t"\'\\;$'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(config: Config, config_path: str, options: list[str], *, user_unit: bool,
              python: str = sys.executable, cwd: str | None = None, user: str | None = None) -> str:
    """The whole unit file; `options`: the pipeline-up options to run with (--set ...)."""
    cwd = cwd or os.getcwd()
    user = user or getpass.getuser()
    runtime_dir = f"edge-pipeline-{config.name}"
    args = [python, "-m", "pipeline.cli.up", str(Path(config_path).resolve()), "--name", config.name,
            *options]
    service = [
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={' '.join(_quote(a) for a in args)}",
        f"WorkingDirectory={_quote(cwd)}",
    ]
    if not user_unit:
        group = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
        service += [f"User={user}", f"Group={group}"]
        cameras = any(isinstance(s, (CameraSource, Picamera2Source)) for s in config.source_list)
        extra = [g for g in ("video", "render") if cameras and _group_exists(g)]
        service += [f"SupplementaryGroups={' '.join(extra)}"] if extra else []
    service += [
        # Sockets and the run directory, private to the service; gone when it stops.
        f"RuntimeDirectory={runtime_dir}",
        "RuntimeDirectoryMode=0700",
        f"Environment=XDG_RUNTIME_DIR=%t/{runtime_dir}",
        "Environment=PYTHONUNBUFFERED=1",
        f"WatchdogSec={WATCHDOG_S}",
        f"TimeoutStartSec={START_TIMEOUT_S}",
        "TimeoutStopSec=20",
        "Restart=on-failure",
        "RestartSec=5",
        "RestartPreventExitStatus=2",  # a config error: restarting cannot fix it
        "KillMode=mixed",  # SIGTERM to the supervisor, which stops its stages itself
        "LimitNOFILE=8192",
        f"SyslogIdentifier=edge-pipeline-{config.name}",
    ]
    return "\n".join([
        "# Made by `pipeline-up --systemd-unit`: regenerate rather than edit (the config, the",
        "# interpreter and the directory are written in full).",
        "[Unit]",
        f"Description=edge-pipeline {config.name}: real-time classification ({Path(config_path).name})",
        "Wants=network-online.target",
        "After=network-online.target",
        # Room for the restarts: 5 starts in 10 minutes, RestartSec=5 apart.
        "StartLimitIntervalSec=600",
        "StartLimitBurst=5",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        f"WantedBy={'default.target' if user_unit else 'multi-user.target'}",
        "",
    ])


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def unit_dir(user_unit: bool) -> Path:
    if user_unit:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return SYSTEM_DIR


def install(config: Config, text: str, user_unit: bool) -> tuple[Path, list[str]]:
    """Write the unit; its path and the commands that enable and start it."""
    folder = unit_dir(user_unit)
    path = folder / unit_name(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".service.new")
        tmp.write_text(text)
        tmp.replace(path)
    except PermissionError:
        raise UserError(f"cannot write {path}: permission denied (install a system unit as root, "
                        f"e.g. with sudo, or a user unit with --user)") from None
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
    ctl = "systemctl --user" if user_unit else "systemctl"
    return path, [f"{ctl} daemon-reload", f"{ctl} enable --now {unit_name(config)}"]
