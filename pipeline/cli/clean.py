"""`pipeline-clean`: remove what pipelines killed with SIGKILL left behind (shared-memory
segments and runtime directories), leaving running pipelines alone."""

from __future__ import annotations

import argparse
import sys

from pipeline.supervisor.shm import orphaned_segments, remove_orphans
from pipeline.transport.rundir import running_pipelines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pipeline-clean", description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = ap.parse_args(argv)
    if args.dry_run:
        for name in orphaned_segments():
            print(f"would remove /dev/shm/{name}")
        return 0
    running = running_pipelines()  # also removes stale runtime directories
    for name in remove_orphans():
        print(f"removed /dev/shm/{name}")
    print(f"{len(running)} running pipeline(s) left untouched", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
