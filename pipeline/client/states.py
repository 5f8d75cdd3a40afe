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
model that has that class) or by index. For ImageNet's classes a source may also watch a group
(`dog`: any of the 118 breeds; pipeline/config/classes.py): a result's classes of the group vote
together, as the group, with the sum of their probabilities in the top-k (the probability that it
is any of them, as far as the top-k tells), and the state is the group (`label` and `group` its
name, `index` its most probable class in the newest result that voted for it). A class in a
watched group votes as itself where the source also watches it by name or index, and as the
smallest watched group it is in where it is in several. Which group each class index counts
towards is worked out once, when the machine is made: a vote only adds into slots made then.

When a source's results start coming from another model (`model_id` changes: `pipeline-deploy`), its
state ends the old model's class and is decided afresh from the new model's results; a result of a
replaced model that arrives late does not vote.

Any consumer may use it: `Tracker` keeps one `StateMachine` per source, built from the
pipeline's config (`source.state`); `attach(..., states=True)` puts the events on each result.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.client.result import Result
from pipeline.config import Config, StateConfig
from pipeline.config.classes import group_key, imagenet_classes, imagenet_groups

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
    group: str | None = None  # a watched group's name (= label): `index` is its most probable class

    def to_dict(self) -> dict[str, Any]:
        """The event as published (jsonl, MQTT): see docs/protocol.md."""
        return {"type": "event", "event": self.event, "source": self.source, "index": self.index,
                "label": self.label, **({"group": self.group} if self.group else {}),
                "probability": round(self.probability, 4),
                "time": self.time, "frame": self.frame, "seq": self.seq, "since": self.since,
                **({"duration_s": round(self.time - self.since, 3)} if self.event == "end" else {})}


@dataclass(slots=True)
class State:
    """What a source shows now: a class, or `none` (index None)."""

    index: int | None  # a group's: its most probable class in the newest result that voted for it
    label: str
    probability: float | None  # of the class (group) in the newest result that voted for it
    since: float  # UNIX time it began (the first result's time, for the initial `none`)
    group: str | None = None  # a watched group's name (= label)

    @property
    def key(self) -> int | str | None:
        """What votes for it: the class index, the group's name, or None for `none`."""
        return self.group if self.group is not None else self.index

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index,
                **({"group": self.group} if self.group else {}),
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
        self._groups_for_votes()
        self.model_id: str | None = None  # the model whose results vote now
        self.replaced: set[str] = set()  # models whose results no longer vote
        self.votes: deque[int | str | None] = deque(maxlen=self.config.window)
        self.labels: dict[int | str, str] = {}  # a vote's label: the class's, or the group's name
        self.group_index: dict[str, int] = {}  # a group's class in the newest result voting for it
        self.state: State | None = None  # None until the first result
        self.decided = False  # the votes have settled on a class (or none) at least once
        self.last_seq = 0  # the newest frame voted on: the newest frame wins
        self.held: int | None = None  # votes since the state last changed (None: not yet changed)

    def _groups_for_votes(self) -> None:
        """The watched groups (items that are no ImageNet class name but a group's), and for each
        ImageNet class the slot of the group it votes for (-1: none, or itself is watched)."""
        names, groups = imagenet_classes(), imagenet_groups()
        lowered = {n.lower() for n in names}
        watched = [g for g in dict.fromkeys(group_key(w) for w in self.config.watch
                                            if isinstance(w, str))
                   if g in groups and g not in lowered]
        self.groups = tuple(watched)
        self.group_of = [-1] * len(names)  # ImageNet class index -> slot in self.groups
        for slot in sorted(range(len(watched)), key=lambda s: -len(groups[watched[s]])):
            for i in groups[watched[slot]]:  # the smallest group comes last: it wins
                self.group_of[i] = slot
        for i, n in enumerate(names):  # watched by its own name or index: votes as itself
            if i in self.watch_indices or n.lower() in self.watch_names:
                self.group_of[i] = -1
        self.imagenet = names
        self.sums = [0.0] * len(watched)  # during a vote: each group's probability in the top-k
        self.firsts = [-1] * len(watched)  # during a vote: each group's most probable class

    def vote(self, r: Result) -> tuple[int | str | None, float | None, int | None]:
        """What this result votes for (a class index, a watched group's name, or None), with its
        probability and its class (a group's most probable one), or (None, None, None)."""
        if self.groups:
            return self._vote_with_groups(r)
        for p in r.top:  # most probable first
            if p.prob < self.config.min_prob:
                break
            if not self.watching or p.index in self.watch_indices \
                    or p.label.lower() in self.watch_names:
                self.labels[p.index] = p.label
                return p.index, p.prob, p.index
        return None, None, None

    def _vote_with_groups(self, r: Result) -> tuple[int | str | None, float | None, int | None]:
        """The most probable of the watched classes and groups (a group: its classes' summed
        probability), if it reaches min_prob; a class wins a tie."""
        best: int | str | None = None
        best_prob, best_index = -1.0, None
        sums, firsts, group_of, names = self.sums, self.firsts, self.group_of, self.imagenet
        for p in r.top:  # most probable first
            i = p.index
            if i in self.watch_indices or p.label.lower() in self.watch_names:
                if p.prob > best_prob:
                    best, best_prob, best_index = i, p.prob, i
                    self.labels[i] = p.label
            elif 0 <= i < len(group_of) and group_of[i] >= 0 and names[i] == p.label:
                slot = group_of[i]  # an ImageNet class (not another model's at this index)
                sums[slot] += p.prob
                if firsts[slot] < 0:
                    firsts[slot] = i
        for slot in range(len(sums)):
            if firsts[slot] >= 0 and sums[slot] > best_prob:  # (a class of it was there)
                best, best_prob, best_index = self.groups[slot], sums[slot], firsts[slot]
            sums[slot], firsts[slot] = 0.0, -1
        if best is None or best_prob < self.config.min_prob:
            return None, None, None
        if isinstance(best, str):
            self.labels[best] = best
        return best, best_prob, best_index

    def update(self, r: Result) -> list[StateEvent]:
        if r.seq <= self.last_seq or r.model_id in self.replaced:  # came late: no vote
            return []
        self.last_seq = r.seq
        events = self._new_model(r) if r.model_id != self.model_id else []
        key, prob, index = self.vote(r)
        if isinstance(key, str) and index is not None:
            self.group_index[key] = index
        if self.state is None:
            self.state = State(None, NONE, None, r.captured_at)
        self.votes.append(key)
        state = self.state
        if key is not None and key == state.key:
            state.probability = prob  # the class holds: its newest probability
            state.index = index  # (a group's most probable class may be another)
        if self.held is not None:
            self.held += 1
            if self.held < self.config.window:  # just entered: it holds for a whole window
                return events
        winner = self._winner()
        self.decided = self.decided or winner is not False
        if winner is False or winner == state.key:
            return events
        self.held = 0
        if state.index is not None:
            events.append(self._event("end", state, state.probability or 0.0, r, state.since))
        if winner is None:
            self.state = State(None, NONE, None, r.captured_at)
        else:
            group = winner if isinstance(winner, str) else None
            self.state = State(self.group_index[group] if group else winner,  # type: ignore[arg-type]
                               self.labels[winner], prob if key == winner else None,
                               r.captured_at, group)
            events.append(self._event("start", self.state, self.state.probability or 0.0, r,
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
            events.append(self._event("end", self.state, self.state.probability or 0.0, r,
                                      self.state.since))
            self.state = State(None, NONE, None, r.captured_at)
        self.votes.clear()
        self.labels.clear()
        self.group_index.clear()
        self.held = None
        self.decided = False
        return events

    def _winner(self) -> int | str | None | Literal[False]:
        """The class (or watched group) the votes settle on, None for `none`, or False while they
        do not agree."""
        window, votes = self.config.window, self.votes
        if self.config.smoothing == "consecutive":
            if len(votes) == window and all(v == votes[-1] for v in votes):
                return votes[-1]
            return False
        (top, n), = Counter(votes).most_common(1)
        return top if n * 2 > window else False

    def _event(self, kind: Literal["start", "end"], state: State, prob: float, r: Result,
               since: float) -> StateEvent:
        """An event of `state` (a class or a group, never `none`)."""
        return StateEvent(kind, self.source, state.index, state.label,  # type: ignore[arg-type]
                          prob, r.captured_at, r.frame_index, r.seq, since, state.group)


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
