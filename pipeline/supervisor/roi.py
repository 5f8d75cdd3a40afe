"""Changing a source's region of interest (`source.roi`) in a running pipeline, without a restart:
the teach page draws one on the live frame.

The request `{"type": "roi", "source": ID, "roi": [x, y, w, h]}` arrives on the run's command
socket (pipeline/supervisor/deploy.py). The region is checked as the config checks it, sent to the
source's preprocess stage as a run-time setting, and the reply waits for that stage's stats to say
it classifies the new region (or that it kept the old one: a pixel region that does not fit its
frames). A restarted preprocess stage starts with the region in force.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipeline.config import Config
from pipeline.config.schema import _SourceBase
from pipeline.supervisor.control import ControlChannel

ROI = "roi"  # the request's type, and the setting's name
CONFIRM_S = 5.0  # the preprocess stage's stats say it uses the region (once a second)


def roi_line(roi: list[int | float] | None) -> str:
    """The config line that sets `roi` (fractions keep a decimal point, pixels do not)."""
    if roi is None:
        return "roi = []"
    return "roi = [" + ", ".join(repr(float(v)) if isinstance(v, float) else str(v) for v in roi) + "]"


def checked_roi(roi: Any) -> list[int | float]:
    """`roi` as the config reads it (fractions if any number is one); ValueError (one line) as
    the config says it."""
    if not isinstance(roi, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            for v in roi):
        raise ValueError(f"roi: {roi!r} must be [x, y, width, height] (4 numbers)")
    if any(isinstance(v, float) for v in roi):
        roi = [float(v) for v in roi]
    return _SourceBase._roi_shape(list(roi))


class RegionChanges:
    """The supervisor's end of a region change: one pending change per source."""

    def __init__(self, config: Config, control: ControlChannel, preprocessors: dict[int, str],
                 say: Callable[..., None], reply: Callable[..., None]):
        """`preprocessors`: source index -> its preprocess stage here; `reply(who, ok, text,
        **fields)` answers on the command socket."""
        self.config, self.control, self.say, self.reply = config, control, say, reply
        self.ids = config.source_ids()
        self.stages = {self.ids[i]: stage for i, stage in preprocessors.items()}
        self.in_force: dict[str, list[int | float]] = {}  # stage -> the region it was given
        self.pending: dict[str, tuple[bytes, list[int | float], str, float]] = {}  # stage -> ...

    def request(self, who: bytes, request: dict[str, Any]) -> None:
        source = str(request.get("source"))
        if source not in self.stages:
            self.reply(who, False, f"source: no source '{source}' in this pipeline (sources: "
                                   f"{', '.join(self.ids)})")
            return
        try:
            roi = checked_roi(request.get("roi"))
        except ValueError as e:
            self.reply(who, False, f"{self._key(source)}.{e}")
            return
        stage = self.stages[source]
        if stage in self.pending:
            self.reply(who, False, f"a region for source '{source}' is being applied now; try again")
            return
        if not self.control.set_settings(stage, {ROI: roi}):
            self.reply(who, False, f"stage '{stage}' cannot be reached (restarting?); try again")
            return
        self.pending[stage] = (who, roi, self.in_force.get(stage), time.monotonic() + CONFIRM_S)
        self.in_force[stage] = roi  # a stage restarted meanwhile starts with it

    def on_stats(self, stage: str, stats: dict[str, Any]) -> None:
        """A preprocess stage's stats: does it use the pending region, or did it refuse it?"""
        if stage not in self.pending:
            return
        who, roi, before, _ = self.pending[stage]
        refused = stats.get("roi_refused") or {}
        if stats.get(ROI) == roi:
            del self.pending[stage]
            self._applied(who, stage, roi)
        elif refused.get(ROI) == roi:
            del self.pending[stage]
            self._restore(stage, before)
            self.reply(who, False, f"{self._key(self._source(stage))}.{refused.get('message')}; "
                                   "the old region stays")

    def tick(self, now: float) -> None:
        """A stage that has no frame to show it on (a paused source): it applies from the next."""
        for stage, (who, roi, _, deadline) in list(self.pending.items()):
            if now > deadline:
                del self.pending[stage]
                self._applied(who, stage, roi, waiting=True)

    def settings(self, stage: str) -> dict[str, Any]:
        """The region a restarted stage starts with."""
        return {ROI: self.in_force[stage]} if stage in self.in_force else {}

    def _applied(self, who: bytes, stage: str, roi: list[int | float], waiting: bool = False) -> None:
        source = self._source(stage)
        when = "from its next frame" if waiting else "now"
        self.say(f"roi: source '{source}' classifies {roi_line(roi)[6:]} of its frames {when}")
        self.reply(who, True, f"source '{source}' classifies {roi_line(roi)[6:]} {when}; to keep it, "
                              f"put `{roi_line(roi)}` under {self._table(source)} in the config")

    def _restore(self, stage: str, before: list[int | float] | None) -> None:
        if before is None:
            self.in_force.pop(stage, None)
        else:
            self.in_force[stage] = before

    def _source(self, stage: str) -> str:
        return next(s for s, st in self.stages.items() if st == stage)

    def _key(self, source: str) -> str:
        return f"sources[{self.ids.index(source)}]" if self.config.sources else "source"

    def _table(self, source: str) -> str:
        return f"the [[sources]] table with id = \"{source}\"" if self.config.sources else "[source]"
