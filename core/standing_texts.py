"""The status texts of the API's copy of the views that stand at the latest instant read, by restaurant id.

Why: with every view of a batch in the copy (core/view_cache.py), judging them one by one in Python
(a dictionary read, then `lo <= now < hi` on each) was 40% of the API's CPU for a batch of 1,000 under
20 clients (py-spy, 2026-11-28). Here the views whose stretch (`ViewFacts.lo`, `.hi`) holds the latest
instant read are kept as their texts, so a batch is one `map` of a dictionary's `get` in C; only the
ids it lacks are judged one by one.

How it stays exact:
- `_now` is the latest instant read. A view enters `_texts` once `lo <= _now` (at once, or from the
  `_starts` heap when `_now` reaches its `lo`) and leaves when `_now` reaches its `hi` (the `_ends`
  heap), or when the copy drops or replaces it (`drop`, `add`). Each `add` takes a new number, kept
  per restaurant in `_marks`; a heap entry whose number is no longer its restaurant's is skipped.
- The heaps hold (instant, number, id) and no view: tuples of ints and a string are left alone by
  Python's garbage collector, while ~500,000 tuples that pointed at views (a 150 s window of fills at
  100,000 restaurants heartbeating every 30 s) made each full collection ~6 times longer (12 → 73 ms
  measured), under a load that fills the copy all the time.
- So at any instant from `_floor` (the greatest `lo` let in) on, and before every `hi`, each text
  held is the one its view serves (`ViewFacts.serve`). A read at an earlier instant (another batch's,
  started a little before) is answered from `_texts` only if it is at or after `_floor`; else the
  caller judges every view itself.
- Views that read a moving `until` (open all week), or were written for another presence window, are
  never held: the caller judges them.
"""

import heapq
import itertools
from collections.abc import Mapping, Sequence

from core.view_facts import ViewFacts

COMPACT_AT = 2  # the heaps are rebuilt when they hold this many times more entries than there are views


class StandingTexts:
    def __init__(self, window_us: int, current: Mapping[str, "ViewFacts | None"]) -> None:
        """`current`: the copy's views by restaurant id (read, never written, here); every change to it
        is told here by `add`, `drop` or `clear`."""
        self.window_us = window_us
        self._current = current
        self._texts: dict[str, str] = {}
        self._starts: list[tuple[int, int, str]] = []  # (lo, mark, id): not standing yet
        self._ends: list[tuple[int, int, str]] = []  # (hi, mark, id): standing until hi
        self._marks: dict[str, int] = {}  # id → the number of its view's `add`, while in a heap
        self._numbers = itertools.count()
        self._now = 0
        self._floor = 0

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, restaurant_id: str, facts: ViewFacts | None) -> None:
        """The copy now holds `facts` for this restaurant (after a read from Redis)."""
        self.drop(restaurant_id)
        if facts is None or facts.moving or facts.window != self.window_us or facts.lo >= facts.hi:
            return
        if facts.hi <= self._now:
            return  # stood only before the latest instant read: judged if ever asked about then
        mark = self._marks[restaurant_id] = next(self._numbers)
        if facts.lo <= self._now:
            self._enter(restaurant_id, facts, mark)
        else:
            heapq.heappush(self._starts, (facts.lo, mark, restaurant_id))
        self._compact()

    def drop(self, restaurant_id: str) -> None:
        self._texts.pop(restaurant_id, None)
        self._marks.pop(restaurant_id, None)

    def clear(self) -> None:
        self._texts.clear()
        self._marks.clear()
        self._starts.clear()
        self._ends.clear()

    def get(self, restaurant_ids: Sequence[str], now_us: int) -> list[str | None] | None:
        """Each id's text at `now_us` where its view is held, else None; None for all when `now_us` is too early."""
        if now_us > self._now:
            self._advance(now_us)
        elif now_us < self._floor:
            return None
        return list(map(self._texts.get, restaurant_ids))

    def _enter(self, restaurant_id: str, facts: ViewFacts, mark: int) -> None:
        self._texts[restaurant_id] = facts.shown
        self._floor = max(self._floor, facts.lo)
        heapq.heappush(self._ends, (facts.hi, mark, restaurant_id))

    def _advance(self, now_us: int) -> None:
        self._now = now_us
        marks, starts, ends = self._marks, self._starts, self._ends
        while starts and starts[0][0] <= now_us:
            _, mark, rid = heapq.heappop(starts)
            if marks.get(rid) == mark:
                facts = self._current.get(rid)
                if facts is not None and now_us < facts.hi:
                    self._enter(rid, facts, mark)
                else:
                    del marks[rid]
        while ends and ends[0][0] <= now_us:
            _, mark, rid = heapq.heappop(ends)
            if marks.get(rid) == mark:
                del marks[rid]
                self._texts.pop(rid, None)

    def _compact(self) -> None:
        """Drop the heap entries of views replaced or dropped since, once they outnumber the live ones."""
        if len(self._starts) + len(self._ends) <= COMPACT_AT * len(self._marks) + 1_000:
            return
        marks = self._marks
        self._starts = [entry for entry in self._starts if marks.get(entry[2]) == entry[1]]
        self._ends = [entry for entry in self._ends if marks.get(entry[2]) == entry[1]]
        heapq.heapify(self._starts)
        heapq.heapify(self._ends)
