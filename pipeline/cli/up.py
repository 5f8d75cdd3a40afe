"""`pipeline-up`: validate a topology, then run it under the supervisor."""

from __future__ import annotations

import argparse
import getpass
import math
import os
import sys
from pathlib import Path

from pipeline.config import Config, ConfigError, check_files, input_files, load_config
from pipeline.outputs import check_folder, first_problem, writes_stdout
from pipeline.supervisor.file_lines import FORMATS, folders_read_once

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pipeline-up",
        description="Run a capture -> preprocess -> inference pipeline described by a TOML topology.")
    ap.add_argument("config", nargs="?",
                    help="topology file, e.g. configs/demo.toml (optional with --list-classes and "
                         "--list-groups: then the shipped model's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (repeatable), e.g. --set source.path=clip.mp4")
    ap.add_argument("--name", help="pipeline name (same as --set name=NAME)")
    ap.add_argument("--duration", type=float, metavar="SECONDS",
                    help="stop after this many seconds of running (default: until Ctrl-C or end of input)")
    ap.add_argument("--record", metavar="FILE", help="write every result as one JSON object per line")
    ap.add_argument("--summary-json", metavar="FILE", help="write the exit summary as JSON")
    ap.add_argument("--quiet", action="store_true", help="no per-second status lines")
    ap.add_argument("--format", choices=FORMATS,
                    help="an images source read once (not looping) prints a line per file on "
                         "stdout: its path, label and probability; text (default), csv (with a "
                         "header) or jsonl")
    ap.add_argument("--metrics-port", type=int, metavar="PORT",
                    help="serve Prometheus metrics on http://HOST:PORT/metrics (0: any free port)")
    ap.add_argument("--host", metavar="NAME",
                    help="run only the stages placed on host NAME by the topology (default: all)")
    ap.add_argument("--metrics-host", default="127.0.0.1",
                    help="address for --metrics-port (default 127.0.0.1: this machine only)")
    ap.add_argument("--check", action="store_true",
                    help="check the config and this machine (files, devices, the source, cores, "
                         "/dev/shm, the model), print what would run, start nothing; exit 0 if it "
                         "would start, 1 if not, 2 for a config error")
    names = ap.add_argument_group("class names, for source.state.watch")
    names.add_argument("--list-classes", nargs="?", const="", metavar="WORD",
                       help="print the model's classes (index, name, and the ImageNet groups each "
                            "is in) and exit: the config's model (a model of your own: its own "
                            "labels), ImageNet's without a config; with WORD only those whose "
                            "name has it or that are in the group WORD (--list-classes dog)")
    names.add_argument("--list-groups", action="store_true",
                       help="print the groups of ImageNet classes that source.state.watch takes "
                            "(dog, cat, bird, car, bottle, ...) with their WordNet synsets, and exit")
    svc = ap.add_argument_group("running as a systemd service")
    svc.add_argument("--systemd-unit", action="store_true",
                     help="print a systemd unit that runs this config as given (this interpreter, "
                          "user and directory) and exit")
    svc.add_argument("--install", action="store_true",
                     help="write that unit to /etc/systemd/system (or, with --user, the user's "
                          "unit folder) and say how to enable and start it")
    svc.add_argument("--user", action="store_true", help="a user unit (systemctl --user)")
    svc.add_argument("--force", action="store_true",
                     help="with --install: replace a unit there that differs (e.g. edited by hand)")
    return ap


def _service_options(args: argparse.Namespace) -> list[str]:
    """The options the service runs with: those given here, but the service's own."""
    out = [arg for text in args.overrides for arg in ("--set", text)]
    for flag, value in (("--record", args.record), ("--summary-json", args.summary_json),
                        ("--host", args.host), ("--metrics-port", args.metrics_port),
                        ("--format", args.format)):
        if value is not None:
            out += [flag, str(Path(value).resolve()) if flag in ("--record", "--summary-json")
                    else str(value)]
    if args.metrics_port is not None:
        out += ["--metrics-host", args.metrics_host]
    return out + (["--quiet"] if args.quiet else [])


def _service(args: argparse.Namespace, config: object) -> int:
    from pipeline.cli.service import install, unit_text
    from pipeline.errors import UserError

    try:
        text = unit_text(config, args.config, _service_options(args), user_unit=args.user)
    except UserError as e:
        print(f"pipeline-up: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:  # a unit may be written before the camera is plugged in
        check_files(config, args.host)
    except ConfigError as e:
        print(f"pipeline-up: warning: {e} (the service will fail to start until it does)",
              file=sys.stderr)
    if not args.install:
        print(text, end="")
        return 0
    try:
        path, commands, changed = install(config, text, args.user, force=args.force)
    except UserError as e:
        print(f"pipeline-up: {e}", file=sys.stderr)
        return 1
    print(f"{'wrote' if changed else 'unchanged:'} {path}; enable and start it with:")
    for command in commands:
        print(f"  {'' if args.user or os.geteuid() == 0 else 'sudo '}{command}")
    if args.user:
        print(f"(and `loginctl enable-linger {getpass.getuser()}` to run it without a login session)")
    return 0


def loopback_reader(config: Config, host: str | None) -> str | None:
    """What to say when `host` reads frames from a capture host over loopback: right when both
    halves run on this machine, a silent wait for frames on two machines."""
    connect = config.edges.frames.connect
    remote = [s.host for s in config.source_list if s.host != host]
    if not host or not connect or not remote:
        return None
    address = connect.split("//", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if not (address in ("localhost", "::1") or address.startswith("127.")):
        return None
    return (f"host {host} reads frames from {connect}, this machine: right when host {remote[0]} "
            "runs here too; on two machines set edges.frames.connect to the camera machine's address")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_classes is not None or args.list_groups:
        from pipeline.cli.class_list import run

        if args.config is None and args.list_classes and (
                args.list_classes.endswith(".toml") or os.path.isfile(args.list_classes)):
            args.config, args.list_classes = args.list_classes, ""  # --list-classes CONFIG

        overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
        return run(args, lambda: load_config(args.config, overrides, host=args.host, files=False)
                   if args.config else None)
    if args.config is None:
        parser.error("the following arguments are required: config")
    if args.user and not (args.systemd_unit or args.install):
        print("pipeline-up: --user goes with --systemd-unit or --install", file=sys.stderr)
        return EXIT_CONFIG
    if args.force and not args.install:
        print("pipeline-up: --force goes with --install", file=sys.stderr)
        return EXIT_CONFIG
    if args.duration is not None and (args.systemd_unit or args.install):
        print("pipeline-up: --duration: a service runs until stopped; leave it out", file=sys.stderr)
        return EXIT_CONFIG
    overrides = list(args.overrides) + ([f"name={args.name}"] if args.name else [])
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        print(f"pipeline-up: --metrics-port must be 0-65535, got {args.metrics_port}", file=sys.stderr)
        return EXIT_CONFIG
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        print(f"pipeline-up: --duration must be a positive number of seconds, got {args.duration}",
              file=sys.stderr)
        return EXIT_CONFIG
    service = args.systemd_unit or args.install
    try:
        config = load_config(args.config, overrides, host=args.host,
                             files=not (service or args.check))
    except ConfigError as e:
        print(f"pipeline-up: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    outputs = {"--record": args.record, "--summary-json": args.summary_json,
               **{f"consumers[{i}].out": c.out for i, c in enumerate(config.consumers)
                  if c.out and c.out != "-" and c.kind != "collect"}}
    problem = first_problem(outputs, input_files(config, args.config))
    for i, c in enumerate(config.consumers):  # a collect consumer writes into a folder
        if not problem and c.kind == "collect":
            problem = check_folder(c.out or "", f"consumers[{i}].out")
    if problem:
        print(f"pipeline-up: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if args.format and not folders_read_once(config):
        kinds = ", ".join(sorted({s.kind + (" looping" if getattr(s, "loop", False) else "")
                                  for s in config.source_list}))
        print(f"pipeline-up: --format: the line per file is for an images source read once "
              f"(source.loop = false); this config's source is {kinds} (--record FILE writes every "
              "result)", file=sys.stderr)
        return EXIT_CONFIG
    loopback = loopback_reader(config, args.host)
    if loopback:
        print(f"warning: {loopback}", file=sys.stderr)
    if service:
        return _service(args, config)
    if args.check:
        from pipeline.supervisor.dry_run import dry_run

        return dry_run(config, args.config, args.host, print)
    from pipeline.supervisor.supervisor import Supervisor  # after validation: bad input starts nothing
    from pipeline.transport.rundir import RuntimeDirError

    # The line per file goes to stdout unless the record does (`--record /dev/stdout`).
    file_lines = (args.format or "text") if folders_read_once(config) and not (
        args.record and writes_stdout(args.record)) else None
    try:
        return Supervisor(config, duration=args.duration, record=args.record,
                          summary_json=args.summary_json, quiet=args.quiet,
                          metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                          host=args.host, file_lines=file_lines).run()
    except RuntimeDirError as e:  # raised before anything starts
        print(f"pipeline-up: {e}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
