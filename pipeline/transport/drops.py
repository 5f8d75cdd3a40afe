"""Why a frame was not classified: the drop reasons the stages count in their stats, by edge
(`frames`, `tensors`, or `source` for what capture itself skips), and the status, the summary,
pipeline-top and the metrics show. A frame lost is counted once, under one reason."""

from __future__ import annotations

LATEST = "latest"
DROP_NEW = "drop_new"
TORN = "torn"
MALFORMED = "malformed"
RESTART = "restart"
STALLED = "stalled"
OVERSIZE = "oversize"
CORRUPT = "corrupt"
ROI = "roi"
DECODE = "decode"

REASONS = {
    LATEST: "a `latest` edge's reader took a newer frame and passed over this one; or its writer "
            "could not hand it over (the reader's queue full, or the reader restarting)",
    DROP_NEW: "a `drop_new` edge's ring was full when the frame came (dropped by the writer)",
    TORN: "the writer overwrote the frame while the reader read it (a `latest` ring lapped a slow "
          "reader)",
    MALFORMED: "its descriptor was not one the reader can use (fields missing, slot or shape out "
               "of range)",
    RESTART: "a stage that died held it; the restarted stage released it",
    STALLED: "the writer of an in-order edge (`block`, `drop_new`) took it back from a reader "
             "that held frames and released none for 10 times its own pace (at least 2 s; 10 s "
             "before its pace is known)",
    OVERSIZE: "it came over a tcp frames edge larger than the receiving host's ring slots (the "
              "source changed its frame size)",
    CORRUPT: "an image file that cannot be read or decoded, or is larger than "
             "source.max_frame_pixels (or than every image the folder held at start)",
    ROI: "an image file that source.roi does not fit",
    DECODE: "a video frame that cannot be decoded: skipped mid-file, or missing at the end of a "
            "file that stops short of the frame count it declares",
}
