"""`pipeline-clean`: remove what pipelines killed with SIGKILL left behind (shared-memory
segments and runtime directories), leaving running pipelines and other users' segments alone."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.describe import description
from pipeline.supervisor.shm import orphaned_segments, others_segments, remove_orphans
from pipeline.transport.rundir import RuntimeDirError, running_pipelines, runtime_root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pipeline-clean", description=description(__doc__))
    ap.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    args = ap.parse_args(argv)
    try:
        runtime_root()  # refuse a runtime directory that is not ours before touching anything
        running = [] if args.dry_run else running_pipelines()  # also removes stale directories
    except RuntimeDirError as e:
        print(f"pipeline-clean: {e}", file=sys.stderr)
        return 1
    names = orphaned_segments() if args.dry_run else remove_orphans()
    for name in names:
        print(f"{'would remove' if args.dry_run else 'removed'} /dev/shm/{name}")
    if not names:
        print("nothing to remove: no shared-memory segment left behind by a stopped pipeline")
    others = len(others_segments())
    if others:
        print(f"pipeline-clean: skipped {others} shared-memory segment(s) of other users",
              file=sys.stderr)
    if not args.dry_run:
        print(f"{len(running)} running pipeline(s) left untouched", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
