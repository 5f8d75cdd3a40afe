"""When to restart a stage that died or hung: its policy, an exponential back-off, and a budget
of restarts per time window after which the pipeline gives up instead of flapping forever."""

from __future__ import annotations

import collections
import time

from pipeline.config import Supervision


class RestartBudget:
    def __init__(self, policy: str, rules: Supervision):
        self.policy = policy
        self.rules = rules
        self.times: collections.deque[float] = collections.deque()
        self.total = 0

    def decide(self, exit_code: int, now: float | None = None) -> float | str:
        """Seconds to wait before restarting, or the reason not to restart (a string)."""
        now = time.monotonic() if now is None else now
        if self.policy == "never":
            return "its restart policy is \"never\""
        if self.policy == "on-failure" and exit_code == 0:
            return "it exited cleanly and its restart policy is \"on-failure\""
        while self.times and now - self.times[0] > self.rules.restart_window_s:
            self.times.popleft()
        if len(self.times) >= self.rules.max_restarts:
            return (f"it was restarted {len(self.times)} times in the last "
                    f"{self.rules.restart_window_s:g} s (supervision.max_restarts)")
        delay = min(self.rules.backoff_max_s, self.rules.backoff_s * 2 ** len(self.times))
        self.times.append(now)
        self.total += 1
        return delay
