"""One line per image file on stdout for an images source read once (not looping): which photo
got which label, in the folder's order, each file once, while the status and the summary go to
stderr. A looping folder stands in for a camera: it never ends, and its results are the record's.

A result names its file by its index in the source's sorted listing (`frame`) and its base name
(`item`); the paths are taken from the same listing made here at start, so no path travels with
a frame. Several workers finish frames out of order: a result is held until the frames captured
before it are printed, or until it is clear they will not come (dropped by a `latest` edge, or
held up for longer than WAIT_S). A file the source skipped (unreadable) or an edge dropped gets a
line without a label, so a script sees every file.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pipeline.config import Config, ImagesSource, image_files

FORMATS = ("text", "csv", "jsonl")
HOLD = 256  # results held for an earlier frame still on its way before that frame is given up
WAIT_S = 2.0  # ... or the longest one is held (the results hub gives up a missing result after 1 s)
NO_RESULT = "(not classified: unreadable, or dropped by an edge)"


def folders_read_once(config: Config) -> dict[str, str]:
    """Source id -> path (folder or glob) of every images source that does not loop."""
    ids = config.source_ids()
    return {ids[i]: src.path for i, src in enumerate(config.source_list)
            if isinstance(src, ImagesSource) and not src.loop}


def shown_path(path: str, here: str) -> str:
    """`path` relative to `here` when it lies below it, else as it is."""
    rel = os.path.relpath(path, here)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


class _Listing:
    """One images source: its files, and where its printing stands."""

    def __init__(self, files: list[str], here: str):
        self.paths = [shown_path(f, here) for f in files]
        self.names = [os.path.basename(f) for f in files]
        self.held: list[tuple[int, int, float, dict[str, Any]]] = []  # (seq, arrival, time, result)
        self.next_seq = 1  # the frame sequence number printed next
        self.last_frame = -1  # the listing index printed last

    def path_of(self, frame: Any, item: Any) -> str:
        """The file behind `frame`; its name `item` where the listing changed since it was made."""
        if type(frame) is int and 0 <= frame < len(self.paths) and self.names[frame] == item:
            return self.paths[frame]
        return str(item)


class FileLines:
    """The per-file lines of every images source of `config`, written to `out` in `fmt`."""

    def __init__(self, config: Config, fmt: str, out: TextIO | None = None,
                 warn: Callable[[str], None] = print):
        """`out`: stdout unless given; `warn` says, once, that it cannot be written."""
        out = out or sys.stdout
        here = os.getcwd()
        self.sources = {sid: _Listing(image_files(path), here)
                        for sid, path in folders_read_once(config).items()}
        self.out: TextIO | None = out
        self.warn = warn
        self.fmt = fmt
        self._arrival = itertools.count()
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self._csv:
            self._write_row(["path", "label", "probability"])

    def on_result(self, msg: dict[str, Any], now: float) -> None:
        """Hold a result until the frames before it are printed (`release`)."""
        listing = self.sources.get(msg.get("source"))  # type: ignore[arg-type]
        if listing is not None:
            heapq.heappush(listing.held, (int(msg["seq"]), next(self._arrival), now, msg))

    def release(self, now: float, final: bool = False) -> None:
        """Print every held result whose turn has come (all of them when `final`)."""
        for listing in self.sources.values():
            held = listing.held
            while held and (final or held[0][0] <= listing.next_seq or len(held) > HOLD
                            or now - held[0][2] > WAIT_S):
                seq, _, _, msg = heapq.heappop(held)
                self._print(listing, seq, msg)
        self._flush()

    def finish(self, ended: bool) -> None:
        """Print what is held; when the stream `ended`, also the files after the last result."""
        self.release(0.0, final=True)
        if ended:
            for listing in self.sources.values():
                for frame in range(listing.last_frame + 1, len(listing.paths)):
                    self._line(listing.paths[frame], None)
                listing.last_frame = len(listing.paths) - 1
        self._flush()

    def _print(self, listing: _Listing, seq: int, msg: dict[str, Any]) -> None:
        frame = msg.get("frame")
        if seq >= listing.next_seq and type(frame) is int:  # in order: files passed over before it
            for skipped in range(listing.last_frame + 1, min(frame, len(listing.paths))):
                self._line(listing.paths[skipped], None)
            listing.last_frame = max(listing.last_frame, frame)
            listing.next_seq = seq + 1
        top = msg["top"][0] if msg.get("top") else None
        self._line(listing.path_of(frame, msg.get("item")), top)

    def _line(self, path: str, top: dict[str, Any] | None) -> None:
        """One file's line: its path, label and probability (None: it was not classified)."""
        if self.fmt == "csv":
            self._write_row([path, top["label"], top["prob"]] if top else [path, "", ""])
        elif self.fmt == "jsonl":
            self._write(json.dumps({"path": path, "label": top["label"] if top else None,
                                    "probability": top["prob"] if top else None}) + "\n")
        else:
            self._write(f"{path}  {top['label']} {top['prob']:.2f}\n" if top else f"{path}  {NO_RESULT}\n")

    def _write_row(self, row: list[Any]) -> None:
        if self.out is not None:
            try:
                self._csv.writerow(row)  # type: ignore[union-attr]
            except OSError as e:
                self._stop(e)

    def _write(self, text: str) -> None:
        if self.out is not None:
            try:
                self.out.write(text)
            except OSError as e:
                self._stop(e)

    def _flush(self) -> None:
        if self.out is not None:
            try:
                self.out.flush()
            except OSError as e:
                self._stop(e)

    def _stop(self, e: OSError) -> None:
        """stdout cannot be written (a pipe whose reader left): the lines stop, the run goes on."""
        try:  # what stays buffered goes nowhere, rather than failing again when it is closed
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self.out.fileno())  # type: ignore[union-attr]
            os.close(null)
        except (OSError, ValueError, io.UnsupportedOperation):  # a stream without a file
            pass
        self.out = None
        self.warn(f"stdout: cannot write any more ({e.strerror}); the per-file lines stopped, "
                  "the pipeline runs on")
