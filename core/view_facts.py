"""A restaurant's status view as read from Redis, and whether it still stands at a given instant.

Pure: the facts come from `view_facts.lua` (one call for a batch) or from the API's copy of them
(core/view_cache.py), and `serve` tells, at the reader's instant, whether the view is still the status
a derivation would give (core/status_view.py says what a view is and why it stands).

The copy asks a view for its status a million times a second at the goal's load, so each view works
out once, when it is parsed, the stretch of time (`lo`, `hi`) over which its answer is one and the same
text (`shown`): a reader inside it needs two comparisons, and `serve` decides everything else.
"""

import time
from dataclasses import dataclass, field
from functools import lru_cache

SEEN = "\0"  # where the reader writes last_seen (NUL is never in JSON text)
MOVING = "\1"  # where the reader writes until = now + SEARCH (hours open all week)


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_ms(ms: int) -> str:
    """`datetime` from epoch milliseconds as pydantic writes it in JSON (no fraction on a whole second)."""
    seconds, rest = divmod(ms, 1000)
    return f'"{_second(seconds)}.{rest:03d}000Z"' if rest else f'"{_second(seconds)}Z"'


def _filled(text: str, last: int) -> str:
    return text.replace(SEEN, iso_ms(last // 1000) if last >= 0 else "null", 1)


@dataclass(slots=True, eq=False)
class ViewFacts:
    """One restaurant's view (meta `w` parsed, JSON `wj`) and the last seen of the devices it names.

    Valid from `t0` to `till` (µs) for the same presence window, while each of the first `connected`
    devices is still heard and each of the next `lapsed` still is not.
    """

    t0: int
    till: int
    window: int
    connected: int
    lapsed: int
    seen_us: tuple[int | None, ...]  # in the order of the meta's device list
    text: str  # the status JSON with SEEN for last_seen (and MOVING for a moving until)
    # From `lo` to `hi` (µs; empty when lo >= hi) the view stands for its own window and `serve` gives
    # `shown`: each connected device still heard, each lapsed one not yet, no stamp between lo and now.
    lo: int = field(default=0, init=False)
    hi: int = field(default=0, init=False)
    shown: str = field(default="", init=False)
    moving: bool = field(default=False, init=False)  # `shown` holds MOVING, for the reader to fill in
    _filled: tuple[int, str] = field(default=(-2, ""), init=False)  # (last seen µs, the text with it)

    def __post_init__(self) -> None:
        lo, hi = self.t0, self.till
        for i, at in enumerate(self.seen_us):
            if i < self.connected:  # heard while now - at < window
                hi = min(hi, at + self.window) if at is not None else lo
            elif i < self.connected + self.lapsed and at is not None:  # not heard once now - at >= window
                lo = max(lo, at + self.window)
        stamps = [at for at in self.seen_us if at is not None]
        # A stamp ahead of the reader's clock is not shown yet: the stretch ends at the first one past lo.
        hi = min([hi, *(at for at in stamps if at > lo)])
        self.lo, self.hi = lo, hi
        if lo < hi:
            self.shown = _filled(self.text, max([-1, *(at for at in stamps if at <= lo)]))
            self.moving = MOVING in self.shown

    def serve(self, now_us: int, window_us: int) -> str | None:
        """The status JSON at `now_us` (MOVING still in it), or None where it must be derived instead."""
        if self.lo <= now_us < self.hi and self.window == window_us:
            return self.shown
        return self.judge(now_us, window_us)

    def judge(self, now_us: int, window_us: int) -> str | None:
        """`serve` by the rule itself, without the stretch worked out beforehand."""
        if not (self.t0 <= now_us < self.till and self.window == window_us):
            return None
        last = -1
        for i, at in enumerate(self.seen_us):
            heard = at is not None and now_us - at < window_us
            if heard != (i < self.connected) and i < self.connected + self.lapsed:
                return None
            if at is not None and last < at <= now_us:
                last = at  # a stamp ahead of the reader's clock is not shown yet
        if self._filled[0] != last:
            self._filled = (last, _filled(self.text, last))
        return self._filled[1]


def _ms(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return int(float(text))  # as Lua's tonumber would read it


def parse_facts(meta: str | None, text: str | None, seen: str | None) -> ViewFacts | None:
    """`view_facts.lua`'s three values for one restaurant; None where no view stands (or one is malformed)."""
    if meta is None or text is None or seen is None:
        return None
    parts = meta.split("|", 5)
    if len(parts) != 6:
        return None
    try:
        t0, till, window, connected, lapsed = (int(p) for p in parts[:5])
        seen_us = tuple(None if s == "-" else _ms(s) * 1000 for s in seen.split())
    except (ValueError, OverflowError):
        return None
    if len(seen_us) != len(parts[5].split()):
        return None
    return ViewFacts(t0, till, window, connected, lapsed, seen_us, text)
