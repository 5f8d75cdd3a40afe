"""Logging for journald: under systemd, stderr is a stream into the journal, which stamps each
line with the time and the unit, and reads a `<N>` prefix as the line's syslog priority. So there
the status is one structured line every few seconds instead of a padded table each second, and
warnings and errors carry `<4>` and `<3>` (`journalctl -p warning` finds them).

systemd sets $JOURNAL_STREAM to the stream's `device:inode`; it counts only if stderr is still
that stream (a shell started from the service and redirected elsewhere is not the journal).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

from pipeline.observe.format import results_per_second, total_drops

ERROR, WARNING, NOTICE, INFO = 3, 4, 5, 6  # syslog priorities
STATUS_EVERY_S = 5.0  # one status line this often in the journal


def journald(stream: IO[str] | None = None) -> bool:
    """Whether `stream` (default stderr) is systemd's journal stream."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def prefix(level: int | None, stream: IO[str] | None = None) -> str:
    """`<N>` for a warning or an error written to the journal, else nothing."""
    return f"<{level}>" if level is not None and level <= WARNING and journald(stream) else ""


class JournalFormatter(logging.Formatter):
    """A stage's log lines, with the syslog priority of warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        level = ERROR if record.levelno >= logging.ERROR else \
            WARNING if record.levelno >= logging.WARNING else None
        return f"<{level}>" * (level is not None) + super().format(record)


def log_format(stage: str) -> logging.Formatter:
    """The stages' log format: `stage: message`, with priorities in the journal."""
    fmt = f"{stage}: %(message)s"
    return JournalFormatter(fmt) if journald() else logging.Formatter(fmt)


def logfmt(fields: dict[str, Any]) -> str:
    """`key=value ...`, values with spaces quoted: one line a journal reader can parse."""
    out = []
    for key, value in fields.items():
        if value is None:
            continue
        text = str(round(value, 3)) if isinstance(value, float) else str(value)
        out.append(f'{key}="{text}"' if (" " in text or not text) else f"{key}={text}")
    return " ".join(out)


def status_fields(st: dict[str, Any]) -> dict[str, Any]:
    """The status worth a journal line: throughput, latency, drops, states, the newest class."""
    lat = st.get("latency_ms") or {}
    return {"status": "pipeline", "elapsed_s": float(st.get("elapsed_s", 0.0)),
            "fps": float(results_per_second(st)),
            "latency_p50_ms": lat.get("p50"), "latency_p99_ms": lat.get("p99"),
            "drops": total_drops(st),
            "stages": ",".join(f"{s}:{m['state']}" for s, m in st["stages"].items()),
            "top": (st.get("top") or {}).get("label"),
            "prob": float((st.get("top") or {}).get("prob", 0.0)) if st.get("top") else None}
