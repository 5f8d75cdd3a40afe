"""A region of interest drawn on the teach page: the config line to paste, and the region applied
to the running pipeline at once (its supervisor tells the source's preprocess stage; see
pipeline/supervisor/roi.py).

    apply_roi(pipeline_name, source_id, roi) -> (applied, line, message)

`roi` is [x, y, width, height] in fractions of the frame (numbers 0 to 1). A region the config
would refuse is (False, "", the config's one-line reason) and changes nothing; a pipeline that
cannot take it now (not running here, ...) is (False, line, why): the line still works in the
config.
"""

from __future__ import annotations

from typing import Any

from pipeline.client.deploy import command
from pipeline.supervisor.roi import ROI, checked_roi, roi_line

TIMEOUT_S = 15.0  # the supervisor waits up to 5 s for the preprocess stage's stats


def apply_roi(pipeline_name: str | None, source_id: str, roi: Any) -> tuple[bool, str, str]:
    """Check `roi` (fractions), then apply it to source `source_id` of the running pipeline."""
    if not isinstance(roi, list) or len(roi) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in roi):
        return False, "", f"roi: {roi!r} must be [x, y, width, height] (4 numbers, fractions of the frame)"
    try:
        fractions = checked_roi([round(float(v), 4) for v in roi])
    except ValueError as e:
        return False, "", str(e)
    line = roi_line(fractions)
    ok, message, reply = command(pipeline_name, {"type": ROI, "source": str(source_id), "roi": fractions},
                                 TIMEOUT_S)
    if not reply:  # the pipeline could not be asked
        return False, line, f"{message}; put `{line}` under the source's table in the config"
    return ok, line, message
