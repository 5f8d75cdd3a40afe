"""A systemd unit for a config, so a Pi classifies for months without a hand-written unit (the
usual failures: the wrong user, interpreter or working directory, and "Start request repeated
too quickly" after a config error).

`pipeline-up CONFIG --systemd-unit` prints it; `--install` writes it (`--user` for a user unit)
and says how to enable and start it. The unit runs this interpreter (this venv) on this config
(absolute path, the same `--set` overrides), as this user, in this directory, with:
`Type=notify` (started once the model is warm and frames flow), `ExecReload=` (`systemctl
reload` deploys the model the config names, without a restart), `WatchdogSec=` (a wedged pipeline
stops pinging and is restarted), `Restart=on-failure` but not after a config error (exit 2), a
start limit that leaves room for the restarts, and a private `RuntimeDirectory` for the run's
sockets.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import os
import pwd
import re
import stat
import sys
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from pipeline.config import CameraSource, Config
from pipeline.config.credentials import SECRET_PARAMS, has_user_info, mask_url
from pipeline.config.schema import Picamera2Source
from pipeline.errors import UserError

# The supervisor pings each second while every stage runs; a stage it restarts (back-off up to
# 10 s, then a model reload) pauses the pings, so this leaves room for one restart.
WATCHDOG_S = 60
START_TIMEOUT_S = 600  # a large torch model loads and warms up before READY on a Pi
SYSTEM_DIR = Path("/etc/systemd/system")
UNIT_MODE = 0o644  # the unit holds no secret: credentials come through LoadCredential=
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a newline would start a setting of its own
PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")  # an ExecStart= word that needs no quotes
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"']+")
CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # what LoadCredential= takes as is


class UnitError(UserError):
    """A unit that cannot be written as asked; one line."""


def unit_name(config: Config) -> str:
    return f"edge-pipeline-{config.name}.service"


def _printable(what: str, value: str) -> str:
    """`value`, refused if a unit file cannot carry it: a line break would end the setting and
    start another (`ExecStartPre=...` in a unit that may run as root)."""
    if CONTROL.search(value):
        raise UnitError(f"{what}: {value!r} holds a control character (newline, tab, ...), which "
                        "a systemd unit cannot carry: rename it or leave it out")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UnitError(f"{what}: {value!r} is not valid UTF-8, which a systemd unit needs") from None
    return value


def _no_secret(value: str) -> str:
    """`value`, refused if it carries a URL with a user, a password or a token: the unit is
    readable by every user and its command line shows in `ps`."""
    for url in URL.findall(value):
        try:
            query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
        except ValueError:
            query = []
        if has_user_info(url) or any(k.lower() in SECRET_PARAMS for k, _ in query):
            raise UnitError(f"{mask_url(url)}: credentials do not belong on the service's "
                            "command line (the unit is readable by every user, and ps shows it): "
                            "put USER:PASSWORD in a file only you can read (chmod 600) and set the "
                            "camera's credentials to it (docs/cameras.md, Credentials)")
    return value


def _exec_word(arg: str) -> str:
    """One ExecStart= word that systemd reads back as exactly `arg` (systemd.service(5),
    "Command lines"; systemd.syntax(7), "Quoting"): `%` (specifiers) and `$` (variables)
    doubled, and in double quotes, with `\\` and `"` escaped, unless plain."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if PLAIN_WORD.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _path_value(what: str, path: str) -> str:
    """A path as the whole value of a setting that takes no quotes and no escapes
    (WorkingDirectory=, LoadCredential=): spaces are fine, `%` is a specifier; the unit's parser
    strips a value's trailing blanks and joins a line ending in `\\` to the next."""
    if path != path.rstrip() or path.endswith("\\"):
        raise UnitError(f"{what}: {path!r} ends in a blank or a backslash, which a systemd unit "
                        "cannot carry: rename it")
    return path.replace("%", "%%")


def _service_user(user: str | None) -> str:
    """The user the system unit runs as: this one, which must exist (systemd looks it up)."""
    try:
        user = user or getpass.getuser()  # $LOGNAME, $USER, else this process's user
        pwd.getpwnam(user)
    except KeyError:
        raise UnitError(f"user {user or os.getuid()!r} (from LOGNAME or USER) does not exist here: the unit "
                        "runs as an existing user; unset LOGNAME and USER, or set them to it") from None
    return _printable("user", user).replace("%", "%%")


def _credentials(config: Config, cwd: str) -> list[str]:
    """LoadCredential= for each IP camera whose credentials are a systemd credential (a bare
    name, pipeline/config/credentials.py): systemd reads the file that name means without it
    (in the working directory) and hands it to the service alone in $CREDENTIALS_DIRECTORY."""
    names = [s.credentials for s in config.source_list
             if isinstance(s, CameraSource) and s.credentials and "/" not in s.credentials]
    for name in names:
        if not CREDENTIAL_NAME.fullmatch(name):
            raise UnitError(f"credentials: {name!r} is not a systemd credential name (letters, "
                            "digits, '_', '-', '.'): rename the file, or give its path")
    return [f"LoadCredential={name}:{_path_value('credentials', os.path.join(cwd, name))}"
            for name in dict.fromkeys(names)]


def unit_text(config: Config, config_path: str, options: list[str], *, user_unit: bool,
              python: str = sys.executable, cwd: str | None = None, user: str | None = None) -> str:
    """The whole unit file; `options`: the pipeline-up options to run with (--set ...).
    UnitError if something given cannot go into a unit safely."""
    cwd = _printable("working directory", cwd or os.getcwd())
    runtime_dir = f"edge-pipeline-{config.name}"
    args = [python, "-m", "pipeline.cli.up", str(Path(config_path).resolve()), "--name", config.name,
            *options]
    for arg in args:
        _printable("command line", _no_secret(arg))
    # `systemctl reload`: the model the config names now (edited, or its file replaced) takes
    # over without a restart (pipeline-deploy --config, with the same --set overrides).
    sets = [a for i, a in enumerate(options) if a == "--set" or i and options[i - 1] == "--set"]
    reload = [python, "-m", "pipeline.cli.deploy", "--config", args[3], "--name", config.name, *sets]
    service = [
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={' '.join(_exec_word(a) for a in args)}",
        f"ExecReload={' '.join(_exec_word(a) for a in reload)}",
        f"WorkingDirectory={_path_value('working directory', cwd)}",
        *_credentials(config, cwd),
    ]
    if not user_unit:
        service += [f"User={_service_user(user)}"]  # and, unless Group= says otherwise, its group
        cameras = any(isinstance(s, (CameraSource, Picamera2Source)) for s in config.source_list)
        extra = [g for g in ("video", "render") if cameras and _group_exists(g)]
        service += [f"SupplementaryGroups={' '.join(extra)}"] if extra else []
    config_file = _printable("config file", Path(config_path).name).replace("%", "%%")
    service += [
        # Sockets and the run directory, private to the service; gone when it stops.
        # pipeline-attach, -top, -trace and attach() look there too (transport/rundir.py).
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
        f"Description=edge-pipeline {config.name}: real-time classification ({config_file})",
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


def install(config: Config, text: str, user_unit: bool, *, force: bool = False
            ) -> tuple[Path, list[str], bool]:
    """Write the unit: its path, the commands that enable and start it, and whether it changed.
    A unit there that differs (edited by hand, or another config's) is replaced only if `force`."""
    folder = unit_dir(user_unit)
    path = folder / unit_name(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        current = _read_unit(path)
        if current != text and current is not None and not force:
            raise UnitError(f"{path} exists and differs from the unit for this config (edited by "
                            "hand?): see how with --systemd-unit and diff, or replace it with --install "
                            "--force")
        if current != text:
            _replace(path, text)
    except PermissionError:
        raise UnitError(f"cannot write {path}: permission denied (install a system unit as root, "
                        f"e.g. with sudo, or a user unit with --user)") from None
    except OSError as e:
        raise UnitError(f"cannot write {path}: {e.strerror}") from None
    ctl = "systemctl --user" if user_unit else "systemctl"
    return path, [f"{ctl} daemon-reload", f"{ctl} enable --now {unit_name(config)}"], current != text


def _read_unit(path: Path) -> str | None:
    """The unit file at `path`, None if there is none; a link or anything but a readable
    regular file reads as "" (it differs from any unit we write)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:  # ELOOP: a symbolic link, not followed
        return ""
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return ""
        return f.read().decode("utf-8", "replace")


def _replace(path: Path, text: str) -> None:
    """Put `text` at `path` whole or not at all: written to a new file of a random name in the
    same folder (created exclusively, so no file or link prepared there is written through),
    then renamed over `path` (which replaces a link there rather than following it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), UNIT_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
