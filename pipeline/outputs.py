"""Files a run writes (`--record`, `--summary-json`, consumers' `--out`, `pipeline-trace --out`
and `--plot`): checked before anything starts, so a typo costs one line and not a run, and an
output can never be one of the run's inputs (recording over the video being read). Files written
whole at the end go to a temporary name beside their place and are renamed into it, so a failed
run never leaves half a file where a good one was."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import Iterable, Iterator


def check_output(path: str, flag: str, inputs: Iterable[str] = ()) -> str | None:
    """None if `path` may be written, else one line naming `flag`, the problem and the fix."""
    if _special(path):  # /dev/stdout, a FIFO: written as they are
        return None
    real = os.path.realpath(path)
    for source in inputs:
        if source and os.path.realpath(source) == real:
            return f"{flag} {path}: that is an input of this run; give another file"
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        return f"{flag} {path}: is a folder; give a file name"
    if not folder.is_dir():
        return f"{flag} {path}: no such folder {folder}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{flag} {path}: the folder {folder} is not writable"
    return None


def check_folder(path: str, flag: str) -> str | None:
    """None if files can be written into folder `path` (made, with its parents, where missing),
    else one line naming `flag` and the problem."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        return f"{flag} {path}: is a file; give a folder"
    existing = target
    while not existing.exists():  # the nearest folder that is there: where the rest gets made
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {path}: {existing} is a file, so the folder cannot be made"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{flag} {path}: the folder {existing} is not writable"
    return None


def first_problem(outputs: dict[str, str | None], inputs: Iterable[str] = ()) -> str | None:
    """The first problem among `{flag: path}` outputs (None paths are not written), including
    two flags naming the same file."""
    inputs = list(inputs)
    seen: dict[str, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        problem = check_output(path, flag, inputs)
        if problem:
            return problem
        real = os.path.realpath(path)
        if real in seen and not _special(path):
            return f"{flag} {path}: {seen[real]} writes that file too; give each its own"
        seen[real] = flag
    return None


class Replacement:
    """A temporary `path` beside `target` (same suffix, for writers that go by it): `commit`
    renames it over `target`, `discard` removes it. A special target (stdout, a pipe) is written
    as it is."""

    def __init__(self, target: str):
        self.target = target
        self.temporary = not _special(target)
        if self.temporary:
            t = Path(target)
            self.path = str(t.with_name(f".{t.stem}.part-{os.getpid()}{t.suffix}"))
        else:
            self.path = target

    def commit(self) -> None:
        if self.temporary:
            os.replace(self.path, self.target)

    def discard(self) -> None:
        if self.temporary:
            Path(self.path).unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """A Replacement's temporary path, renamed over `path` when the block ends without an
    exception and removed when it raises."""
    replacement = Replacement(path)
    try:
        yield replacement.path
        replacement.commit()
    finally:
        replacement.discard()


def write_whole(path: str, text: str) -> None:
    """Write `text` to `path` through `replacing`."""
    with replacing(path) as tmp:
        Path(tmp).write_text(text)


def writes_stdout(path: str) -> bool:
    """Whether writing `path` writes this process's stdout (`/dev/stdout`, the pipe it is)."""
    try:
        there, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return (there.st_dev, there.st_ino) == (out.st_dev, out.st_ino)


def _special(path: str) -> bool:
    """Not a regular file that exists or will: stdout, a terminal, a pipe."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)
