"""The dataset folder as the labelling page changes it: the layout `pipeline-train` reads (a folder
per class, `unlabelled/` never a class), so the page and the command line can be mixed.

Every change is a rename within the folder (a file is linked to its new name, then its old one
removed, so nothing is ever written over); a deleted example goes to `.trash/` (hidden: training
and collect ignore it), so each change can be undone from a journal kept in memory. An example is
named by its id, `FOLDER/NAME`; an id that leaves the dataset (`..`, an absolute path, a hidden
name, a symbolic link anywhere on the way) is refused. Uploads are limited in size and type and
decoded before they are kept, under a name made safe.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.train.dataset import COLLECTED, IMAGE_SUFFIXES, UNLABELLED

TRASH = ".trash"
REVIEW_INDEX = ".review"  # names of the unlabelled examples saved for review, a line each
CLASS_NAME = re.compile(r"[A-Za-z0-9 _.-]{1,64}")
MAX_UPLOAD = 10 << 20  # bytes
UPLOAD_TYPES = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/bmp": ".bmp"}
THUMB_WIDTH = 160
THUMB_CACHE = 512  # thumbnails kept encoded (about 5 KiB each)
JOURNAL = 50  # actions undo can go back through


class StoreError(UserError):
    """A request the dataset cannot carry out, in one line (the page shows it)."""


class NotFound(StoreError):
    """An id that names no example."""


def class_problem(name: str) -> str | None:
    """Why `name` cannot be a class (None if it can): what pipeline-train and a file system take."""
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name):
        return (f"a class name is 1-64 letters, digits, spaces, _ . or -: not {str(name)[:80]!r}")
    if name.startswith(".") or name.lower().startswith(UNLABELLED) or name != name.strip():
        return (f"a class name may not start with '.' or {UNLABELLED!r} nor start or end with a "
                f"space: {name!r}")
    return None


def review_names(root: Path) -> set[str]:
    """The names of the examples saved for review (those still unlabelled are offered first)."""
    try:
        return set((root / REVIEW_INDEX).read_text().split())
    except OSError:
        return set()


def mark_review(root: Path, name: str) -> None:
    """Note an example saved into unlabelled/ for review (one short append: atomic)."""
    with open(root / REVIEW_INDEX, "a") as f:
        f.write(name + "\n")


@dataclass
class Action:
    """One change, and how to take it back: `moves` (done, as (from, to)) are reversed in reverse
    order, then `made` (a folder) removed."""

    text: str
    moves: list[tuple[Path, Path]] = field(default_factory=list)
    made: Path | None = None


class Store:
    """The dataset at `root`; thread-safe (the HTTP server's threads share one)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.trash = self.root / TRASH
        for folder in (self.root / UNLABELLED, self.trash):
            folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.journal: deque[Action] = deque(maxlen=JOURNAL)
        self._thumbs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()

    # -- reading --------------------------------------------------------------------------------
    def classes(self) -> list[str]:
        return sorted(f.name for f in self._folders() if f.name != UNLABELLED)

    def _folders(self) -> list[Path]:
        return [p for p in self.root.iterdir()
                if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()]

    def examples(self, source: str | None = None) -> list[dict[str, Any]]:
        """Every example (of `source` alone if given): unlabelled first, those saved for review
        first among them, then by class; newest first within each."""
        review = review_names(self.root)
        found = []
        for folder in self._folders():
            for path in folder.iterdir():
                if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES \
                        or path.is_symlink() or not path.is_file():
                    continue
                m = COLLECTED.match(path.name)
                src = m["source"] if m else ""
                if source is not None and src != source:
                    continue
                taken = _capture_time(m["time"]) if m else None
                unlabelled = folder.name == UNLABELLED
                flagged = unlabelled and path.name in review
                newest = taken if taken is not None else _mtime(path)
                found.append(((not unlabelled, not flagged, folder.name, -newest, path.name), {
                    "id": f"{folder.name}/{path.name}", "class": folder.name, "source": src,
                    "time": taken, "frame": int(m["n"]) if m else None, "review": flagged}))
        return [e for _, e in sorted(found, key=lambda k: k[0])]

    def counts(self) -> dict[str, int]:
        counts = {}
        for folder in self._folders():
            counts[folder.name] = sum(1 for p in folder.iterdir() if not p.name.startswith(".")
                                      and p.suffix.lower() in IMAGE_SUFFIXES)
        counts.setdefault(UNLABELLED, 0)
        return counts

    def undo_text(self) -> str:
        with self.lock:
            return self.journal[-1].text if self.journal else ""

    def path(self, example: str) -> Path:
        """The file of an example id `FOLDER/NAME`; StoreError for an id that is not one, that
        would leave the dataset, or that names a link; NotFound when there is no such file."""
        parts = example.split("/") if isinstance(example, str) else []
        if len(parts) != 2 or any(not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts) \
                or Path(parts[1]).suffix.lower() not in IMAGE_SUFFIXES:
            raise StoreError(f"not an example id: {str(example)[:80]!r} (FOLDER/NAME.jpg, in the dataset)")
        folder = self.root / parts[0]
        path = folder / parts[1]
        if folder.is_symlink() or path.is_symlink() or path.resolve().parent != self.root / parts[0]:
            raise StoreError(f"{example[:80]!r} leads outside the dataset: refused")
        if not path.is_file():
            raise NotFound(f"no example {example[:80]!r} (moved or deleted meanwhile?)")
        return path

    def image(self, example: str, thumb: bool = False) -> tuple[bytes, str]:
        """The example's bytes and content type; a JPEG at most THUMB_WIDTH wide if `thumb`."""
        path = self.path(example)
        if not thumb:
            kind = {".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp"}
            return path.read_bytes(), kind.get(path.suffix.lower(), "image/jpeg")
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self.lock:
            jpeg = self._thumbs.get(key)
            if jpeg is not None:
                self._thumbs.move_to_end(key)
                return jpeg, "image/jpeg"
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise StoreError(f"{example[:80]!r} is not an image OpenCV can read")
        h, w = image.shape[:2]
        if w > THUMB_WIDTH:
            image = cv2.resize(image, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))),
                               interpolation=cv2.INTER_AREA)
        jpeg = cv2.imencode(".jpg", image, (cv2.IMWRITE_JPEG_QUALITY, 80))[1].tobytes()
        with self.lock:
            self._thumbs[key] = jpeg
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return jpeg, "image/jpeg"

    # -- changing -------------------------------------------------------------------------------
    def label(self, ids: list[str], cls: str) -> list[str]:
        """Move the examples into class `cls` (`unlabelled` moves them back); their new ids. All
        or none: checked before anything moves."""
        with self.lock:
            target = self._class_folder(cls)
            paths = self._paths(ids)
            moves = []
            for path in paths:
                if path.parent != target:
                    if os.path.lexists(target / path.name):
                        raise StoreError(f"{cls}/{path.name} exists already: delete one of the two first")
                    moves.append((path, target / path.name))
            self._do(Action(f"label {_count(len(moves))} as {cls}"), moves)
            return [f"{cls}/{p.name}" for p in paths]

    def delete(self, ids: list[str]) -> int:
        """Move the examples to the trash (undo brings them back)."""
        with self.lock:
            stamp = time.time_ns()
            moves = [(p, self.trash / f"{stamp}-{i}-{p.parent.name}-{p.name}")
                     for i, p in enumerate(self._paths(ids))]
            self._do(Action(f"delete {_count(len(moves))}"), moves)
            return len(moves)

    def create(self, name: str) -> None:
        problem = class_problem(name)
        if problem:
            raise StoreError(problem)
        with self.lock:
            folder = self.root / name
            if os.path.lexists(folder):
                raise StoreError(f"class {name!r} exists already")
            folder.mkdir()
            self.journal.append(Action(f"create class {name}", made=folder))

    def rename(self, name: str, to: str) -> None:
        problem = class_problem(to)
        if problem:
            raise StoreError(problem)
        with self.lock:
            old = self._class_folder(name)
            if old.name == UNLABELLED:
                raise StoreError(f"{UNLABELLED!r} is not a class: it cannot be renamed")
            new = self.root / to
            if os.path.lexists(new):
                raise StoreError(f"class {to!r} exists already")
            self._do(Action(f"rename class {name} to {to}"), [(old, new)])

    def upload(self, cls: str, filename: str, content_type: str, data: bytes) -> str:
        """Keep an uploaded picture in class `cls` (or unlabelled) under a safe, unused name made
        from `filename`; its id."""
        ext = UPLOAD_TYPES.get((content_type or "").split(";")[0].strip().lower())
        if ext is None:
            raise StoreError(f"an upload is {', '.join(UPLOAD_TYPES)}: not {str(content_type)[:60]!r}")
        if len(data) > MAX_UPLOAD:
            raise StoreError(f"an upload is at most {MAX_UPLOAD >> 20} MiB: this one is {len(data)} bytes")
        if not isinstance(filename, str) or not filename or any(c in filename for c in "/\\\0") \
                or filename.startswith(".") or len(filename) > 255:
            raise StoreError(f"an upload's name is a plain file name (no folders, not hidden): "
                             f"{str(filename)[:80]!r}")
        if not _magic_matches(ext, data) or not _decodes(data):
            raise StoreError(f"{filename[:80]!r} is not a {content_type} image OpenCV can read")
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename).stem).lstrip(".")[:80] or "upload"
        with self.lock:
            folder = self._class_folder(cls)
            for n in range(1, 1000):
                name = f"{stem}{'' if n == 1 else f'-{n}'}{ext}"
                if not os.path.lexists(folder / name):
                    break
            else:
                raise StoreError(f"too many uploads named {stem!r} in {cls!r}: rename the file")
            tmp = folder / f".{name}.part-{os.getpid()}-{threading.get_ident()}"
            try:
                tmp.write_bytes(data)
                _move(tmp, folder / name)
            except OSError as e:
                raise StoreError(f"cannot write {cls}/{name}: {e.strerror}") from None
            finally:
                tmp.unlink(missing_ok=True)
            self.journal.append(Action(f"upload {name} into {cls}",
                                       [(self.trash / f"{time.time_ns()}-upload-{name}", folder / name)]))
            return f"{cls}/{name}"

    def undo(self) -> str:
        """Take back the last change; what it was."""
        with self.lock:
            if not self.journal:
                raise StoreError("nothing to undo")
            action = self.journal.pop()
            back = [(new, old) for old, new in reversed(action.moves)]
            for new, old in back:
                if not os.path.lexists(new) or os.path.lexists(old):
                    raise StoreError(f"cannot undo {action.text}: {new.relative_to(self.root)} was moved "
                                     "meanwhile")
            if action.made is not None and any(action.made.iterdir()):
                raise StoreError(f"cannot undo {action.text}: the class is not empty any more")
            for new, old in back:
                _move(new, old)
            if action.made is not None:
                action.made.rmdir()
            return action.text

    # -- helpers (under the lock) ---------------------------------------------------------------
    def _class_folder(self, cls: str) -> Path:
        if cls != UNLABELLED:
            problem = class_problem(cls)
            if problem:
                raise StoreError(problem)
        folder = self.root / cls
        if folder.is_symlink() or not folder.is_dir():
            known = ", ".join(self.classes()) or "none"
            raise StoreError(f"no class {cls!r}: create it first (classes: {known})")
        return folder

    def _paths(self, ids: list[str]) -> list[Path]:
        if not isinstance(ids, list) or not ids:
            raise StoreError("ids: a list of example ids (FOLDER/NAME.jpg)")
        if len(ids) > 10_000:
            raise StoreError(f"at most 10000 examples at once, not {len(ids)}")
        return list(dict.fromkeys(self.path(i) for i in ids))

    def _do(self, action: Action, moves: list[tuple[Path, Path]]) -> None:
        """Make the moves; on a failure midway, put back those made."""
        done: list[tuple[Path, Path]] = []
        try:
            for old, new in moves:
                _move(old, new)
                done.append((old, new))
        except OSError as e:
            for old, new in reversed(done):
                _move(new, old)
            raise StoreError(f"cannot {action.text}: {e.strerror}") from None
        if done:
            action.moves = done
            self.journal.append(action)


def _move(old: Path, new: Path) -> None:
    """Rename within the dataset, never over something there (FileExistsError): a file is linked
    to its new name, then its old one removed."""
    if old.is_dir() or not _linked(old, new):
        if os.path.lexists(new):
            raise FileExistsError(17, "exists already", str(new))
        os.rename(old, new)
    else:
        old.unlink()


def _linked(old: Path, new: Path) -> bool:
    """Link `new` to `old`'s file; False on a file system without hard links."""
    try:
        os.link(old, new)
        return True
    except FileExistsError:
        raise
    except OSError:
        return False


def _capture_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y%m%d-%H%M%S.%f").replace(tzinfo=timezone.utc).timestamp()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _count(n: int) -> str:
    return f"{n} example{'s' if n != 1 else ''}"


def _magic_matches(ext: str, data: bytes) -> bool:
    """Whether the bytes start as the declared type's files do."""
    if ext == ".jpg":
        return data[:3] == b"\xff\xd8\xff"
    if ext == ".png":
        return data[:8] == b"\x89PNG\r\n\x1a\n"
    if ext == ".bmp":
        return data[:2] == b"BM"
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _decodes(data: bytes) -> bool:
    """Whether OpenCV decodes the picture (a JPEG at an eighth of its size: cheap for a big one)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return image is not None and image.size > 0
