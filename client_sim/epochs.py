"""Connection epochs that only grow, across reconnects and across restarts of the simulator.

An epoch is the number of milliseconds since 2020-01-01 UTC at the moment of connecting, bumped to
one more than the previous epoch of the same device when the clock has not moved on (two connects in
one millisecond, or a clock stepped back). Time gives monotonicity across process restarts without a
state file (a restart takes far more than a millisecond); the 2020 origin keeps the numbers visibly
distinct from `ts` timestamps, and they stay below 2**53 (JavaScript's and Lua's exact integers) for
about 285,000 years.
"""

import time

EPOCH_ORIGIN_MS = 1_577_836_800_000  # 2020-01-01T00:00:00Z


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def time_epoch() -> int:
    return wall_ms() - EPOCH_ORIGIN_MS


class EpochCounter:
    """The epochs of one device: strictly increasing, derived from the wall clock."""

    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> int:
        self.last = max(time_epoch(), self.last + 1)
        return self.last
