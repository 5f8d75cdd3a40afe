"""Classification as a state: a source's results become a state that changes only when several
agree, and each change is a pair of events (`end` of the old class, `start` of the new one).

A camera pointed at one place flickers between classes from frame to frame; what a home
automation or an alarm wants is "the bottle is there" once, when it appears, and "gone" once.
A result *votes* for the most probable class in its top-k that is watched (any class, if the
source watches none) and reaches `min_prob`, or for `none`; a result of an older frame than one
already counted (several workers finish out of order) does not vote. The state becomes a vote's class
when the last `window` votes all agree (`consecutive`) or when more than half of them do
(`majority`). `window = 1` is the raw top-1, unsmoothed.

A state just entered holds for `window` results: the next change is decided by the same rule from
a window of votes all cast after the state began, never from votes that elected the old one. So a
state never changes twice within `window` results: a majority of 7 that has just become X does not
flip back to Y on a single Y vote (`consecutive` has this by its rule alone).

A class is watched by name (matched against each result's labels, so the same config serves any
model that has that class) or by index. When a source's results start coming from another model
(`model_id` changes: `pipeline-deploy`), its state ends the old model's class and is decided afresh
from the new model's results; a result of a replaced model that arrives late does not vote.

Any consumer may use it: `Tracker` keeps one `StateMachine` per source, built from the
pipeline's config (`source.state`); `attach(..., states=True)` puts the events on each result.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.client.result import Result
from pipeline.config import Config, StateConfig

NONE = "none"  # the state's label when no watched class qualifies


@dataclass(frozen=True, slots=True)
class StateEvent:
    """A state change of one source: `start` of a class, or its `end`."""

    event: Literal["start", "end"]
    source: str
    index: int  # the model's class index
    label: str
    probability: float  # start: of the result that confirmed it; end: the last while it held
    time: float  # UNIX time the frame that decided it was captured
    frame: int | None  # that frame's index in the source
    seq: int  # that frame's sequence number
    since: float  # UNIX time the class's state began (= time for a start)

    def to_dict(self) -> dict[str, Any]:
        """The event as published (jsonl, MQTT): see docs/protocol.md."""
        return {"type": "event", "event": self.event, "source": self.source, "index": self.index,
                "label": self.label, "probability": round(self.probability, 4),
                "time": self.time, "frame": self.frame, "seq": self.seq, "since": self.since,
                **({"duration_s": round(self.time - self.since, 3)} if self.event == "end" else {})}


@dataclass(slots=True)
class State:
    """What a source shows now: a class, or `none` (index None)."""

    index: int | None
    label: str
    probability: float | None  # of the class in the newest result that voted for it
    since: float  # UNIX time it began (the first result's time, for the initial `none`)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index,
                "probability": None if self.probability is None else round(self.probability, 4),
                "since": self.since}


class StateMachine:
    """One source's state. `update(result)` returns the events that result caused."""

    def __init__(self, source: str, config: StateConfig | None = None):
        self.source = source
        self.config = config or StateConfig()
        self.watch_names = {w.strip().lower() for w in self.config.watch if isinstance(w, str)}
        self.watch_indices = {w for w in self.config.watch if isinstance(w, int)}
        self.watching = bool(self.config.watch)
        self.model_id: str | None = None  # the model whose results vote now
        self.replaced: set[str] = set()  # models whose results no longer vote
        self.votes: deque[int | None] = deque(maxlen=self.config.window)
        self.labels: dict[int, str] = {}
        self.state: State | None = None  # None until the first result
        self.decided = False  # the votes have settled on a class (or none) at least once
        self.last_seq = 0  # the newest frame voted on: the newest frame wins
        self.held: int | None = None  # votes since the state last changed (None: not yet changed)

    def vote(self, r: Result) -> tuple[int | None, float | None]:
        """The class this result stands for, with its probability, or (None, None)."""
        for p in r.top:  # most probable first
            if p.prob < self.config.min_prob:
                break
            if not self.watching or p.index in self.watch_indices \
                    or p.label.lower() in self.watch_names:
                self.labels[p.index] = p.label
                return p.index, p.prob
        return None, None

    def update(self, r: Result) -> list[StateEvent]:
        if r.seq <= self.last_seq or r.model_id in self.replaced:  # came late: no vote
            return []
        self.last_seq = r.seq
        events = self._new_model(r) if r.model_id != self.model_id else []
        index, prob = self.vote(r)
        if self.state is None:
            self.state = State(None, NONE, None, r.captured_at)
        self.votes.append(index)
        state = self.state
        if index is not None and index == state.index:
            state.probability = prob  # the class holds: its newest probability
        if self.held is not None:
            self.held += 1
            if self.held < self.config.window:  # just entered: it holds for a whole window
                return events
        winner = self._winner()
        self.decided = self.decided or winner is not False
        if winner is False or winner == state.index:
            return events
        self.held = 0
        if state.index is not None:
            events.append(self._event("end", state.index, state.probability or 0.0, r,
                                      state.since))
        if winner is None:
            self.state = State(None, NONE, None, r.captured_at)
        else:
            self.state = State(winner, self.labels[winner], prob if index == winner else None,
                               r.captured_at)
            events.append(self._event("start", winner, self.state.probability or 0.0, r,
                                      r.captured_at))
        return events

    def _new_model(self, r: Result) -> list[StateEvent]:
        """Results from another model: the old one's class ends, its votes are forgotten, and
        the state is undecided (`none`, not yet decided) until the new model's votes agree."""
        if self.model_id is not None:
            self.replaced.add(self.model_id)
        self.model_id = r.model_id
        events = []
        if self.state is not None and self.state.index is not None:
            events.append(self._event("end", self.state.index, self.state.probability or 0.0, r,
                                      self.state.since))
            self.state = State(None, NONE, None, r.captured_at)
        self.votes.clear()
        self.labels.clear()
        self.held = None
        self.decided = False
        return events

    def _winner(self) -> int | None | Literal[False]:
        """The class the votes settle on, None for `none`, or False while they do not agree."""
        window, votes = self.config.window, self.votes
        if self.config.smoothing == "consecutive":
            if len(votes) == window and all(v == votes[-1] for v in votes):
                return votes[-1]
            return False
        (top, n), = Counter(votes).most_common(1)
        return top if n * 2 > window else False

    def _event(self, kind: Literal["start", "end"], index: int, prob: float, r: Result,
               since: float) -> StateEvent:
        return StateEvent(kind, self.source, index, self.labels.get(index, str(index)), prob,
                          r.captured_at, r.frame_index, r.seq, since)


class Tracker:
    """A state machine per source of a pipeline, each with that source's `state` options."""

    def __init__(self, config: Config | dict[str, Any] | None = None):
        if isinstance(config, dict):
            config = Config.model_validate(config)
        self.options: dict[str, StateConfig | None] = {}
        if config is not None:
            self.options = {sid: src.state for sid, src in zip(config.source_ids(),
                                                                config.source_list)}
        self.machines: dict[str, StateMachine] = {}

    def declared(self, source: str) -> bool:
        """Whether the pipeline's config gives this source state options (`source.state`)."""
        return self.options.get(source) is not None

    def update(self, r: Result) -> list[StateEvent]:
        machine = self.machines.get(r.source)
        if machine is None:
            machine = self.machines[r.source] = StateMachine(r.source, self.options.get(r.source))
        return machine.update(r)

    def state(self, source: str) -> State | None:
        machine = self.machines.get(source)
        return machine.state if machine else None
