"""Exponential reconnect backoff with full jitter, so a broker restart is not a self-inflicted storm."""

import random


def backoff_ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The largest delay of the `attempt`-th retry (0-based): base·2^attempt, at most `cap_s`."""
    return min(cap_s, base_s * 2 ** min(attempt, 62))


class Backoff:
    """Full jitter (delay uniform in [0, ceiling]): retries of many devices spread over the window."""

    __slots__ = ("attempt", "base_s", "cap_s", "rng")

    def __init__(self, base_s: float, cap_s: float, rng: random.Random) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, backoff_ceiling(self.attempt, self.base_s, self.cap_s))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
