"""The bridge's bounded buffer between the MQTT sockets and the batch loop (both on the asyncio loop)."""

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

LINGER_S = 0.005  # with a presence message waiting: births and wills are what the dashboard shows
LINGER_QUIET_S = 0.015  # heartbeats only: their goal is 100 ms to Redis, and every batch costs round trips


class Inbox(Generic[T]):
    """`put` from socket callbacks, `take` batches; past `high` the readers pause until `low`.

    A paused reader leaves the bytes in the kernel and then in the broker, whose queue for the bridge's
    user is unbounded, so back-pressure costs memory in Mosquitto rather than messages here.
    """

    def __init__(self, high: int = 50_000, low: int = 10_000) -> None:
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._high, self._low = high, low
        self._paused: list[Callable[[], None]] = []
        self._urgent = asyncio.Event()  # an urgent item arrived since the last take

    def put(self, item: T, urgent: bool = False) -> None:
        self._items.append(item)
        self._ready.set()
        if urgent:
            self._urgent.set()

    @property
    def full(self) -> bool:
        return len(self._items) >= self._high

    def resume_later(self, resume: Callable[[], None]) -> None:
        """A reader that paused because the inbox is full asks to be resumed once it drains."""
        self._paused.append(resume)

    async def take(self, max_items: int, wait_s: float | None = None) -> list[T]:
        """Wait for at least one item (or `wait_s`) and return up to `max_items`."""
        if not self._items:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), wait_s)
            except TimeoutError:
                return []
        if len(self._items) < max_items // 4 and wait_s != 0:
            # Let the socket readers run a little: a batch costs its Redis round trips whatever its size,
            # and a few milliseconds here turn batches of 5 into batches of hundreds under load. Without
            # an urgent item the wait is longer (100,000 devices' heartbeats came in ~170 batches a
            # second); an urgent item that arrives meanwhile cuts it to LINGER_S from its arrival. (Ending
            # it at once made about a batch per birth in a storm: the 100,000 storm then took 33.2 s to
            # settle, against 10.1 s before and 15.2 s with this; runs vary.)
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), min(LINGER_QUIET_S, wait_s or LINGER_QUIET_S))
            if self._urgent.is_set():
                await asyncio.sleep(LINGER_S)
        self._urgent.clear()
        count = min(max_items, len(self._items))
        batch = [self._items.popleft() for _ in range(count)]
        if self._paused and len(self._items) <= self._low:
            paused, self._paused = self._paused, []
            for resume in paused:
                resume()
        return batch

    def first(self) -> T | None:
        """The oldest item waiting, left in place."""
        return self._items[0] if self._items else None

    def __len__(self) -> int:
        return len(self._items)
