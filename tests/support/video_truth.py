"""What the asset videos show, frame by frame: two state tasks (the middle bottle there or away;
people in the room or not), as frame ranges seen by eye, for the tests and the benchmarks.

Each task gives a training part and an evaluation part (`train`, `eval`: class -> frame ranges
[a, b), leaving frames near a transition out), and `segments`: the whole video as the state each
frame shows, [a, b) -> class, in order; frames between two segments are a transition (the bottle
being lifted, say), which shows neither state cleanly.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

# bottle-detection.mp4 (640x360, 30 fps, 1189 frames): three water bottles on a table; the middle
# one (in the centre crop) is lifted away at frames 527-536 and put back at 660-680; hands move
# the other two bottles at other times (the middle one stays: "bottle"). Ranges [a, b) leave
# about 10 frames around each transition out.
BOTTLE = {
    "file": "bottle-detection.mp4", "fps": 30,
    "train": {"bottle": [(0, 516)], "empty": [(546, 598)]},
    "eval": {"bottle": [(690, 1189)], "empty": [(598, 650)]},
    "segments": [(0, 527, "bottle"), (537, 660, "empty"), (681, 1189, "bottle")],
}
# one-by-one-person-detection.mp4 (768x432, 10 fps, 1394 frames): an empty room with a small
# table; one person at a time walks in from the camera's side, stands, and walks out to the right.
# Seen frame by frame: a person is in view from frame 61 to 201, 229-451, 505-705, 746-871,
# 921-1204 and 1234-1361; the room is empty otherwise. Ranges leave 8 frames (0.8 s) around each
# transition out. Trained on the first half (to frame 700), evaluated on the second.
PERSON = {
    "file": "one-by-one-person-detection.mp4", "fps": 10,
    "train": {"absent": [(0, 53), (210, 221), (462, 497)],
              "present": [(70, 192), (238, 442), (514, 692)]},
    "eval": {"absent": [(713, 738), (880, 913), (1212, 1226), (1370, 1394)],
             "present": [(755, 862), (930, 1190), (1243, 1350)]},
    "segments": [(0, 61, "absent"), (61, 202, "present"), (202, 229, "absent"), (229, 452, "present"),
                 (452, 505, "absent"), (505, 706, "present"), (706, 746, "absent"),
                 (746, 872, "present"), (872, 921, "absent"), (921, 1205, "present"),
                 (1205, 1234, "absent"), (1234, 1362, "present"), (1362, 1394, "absent")],
}


def frames_in(ranges: list[tuple[int, int]]) -> list[int]:
    """Every frame of the ranges [a, b), in order."""
    return [f for a, b in ranges for f in range(a, b)]


def label_at(task: dict, frame: int) -> str | None:
    """The state the frame shows, or None during a transition (or past the end)."""
    for a, b, label in task["segments"]:
        if a <= frame < b:
            return label
    return None


def transitions(task: dict) -> list[tuple[int, int, str, str]]:
    """The true state changes: (first frame of the change, first frame of the new state, old
    state, new state); the two frames are equal where the change is instant."""
    segs = task["segments"]
    return [(b, c, old, new) for (_, b, old), (c, _, new) in zip(segs, segs[1:]) if old != new]


# The bottle video's state at a frame, training and evaluation ranges together.
BOTTLE_STATES = {c: BOTTLE["train"][c] + BOTTLE["eval"][c] for c in BOTTLE["train"]}
COLLECT_FPS = 30  # the frame rate the collect consumer's file names are written at below


def label_of(frame: int) -> str | None:
    """The bottle video's state at `frame`, or None near a transition."""
    return next((c for c, ranges in BOTTLE_STATES.items() if any(a <= frame < b for a, b in ranges)),
                None)


def collect_name(frame: int, source: str = "cam") -> str:
    """The collect consumer's file name for a frame: <source>-<UTC time>-f<frame>.jpg."""
    t = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc) + timedelta(seconds=frame / COLLECT_FPS)
    return f"{source}-{t.strftime('%Y%m%d-%H%M%S.%f')}-f{frame}.jpg"
