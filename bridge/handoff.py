"""A bounded hand-off from paho's network threads to the asyncio loop."""

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class HandOff(Generic[T]):
    """Threads `put`, the loop `take`s batches.

    paho calls `on_message` in its own thread, which must never touch asyncio objects: it appends to
    a deque under a lock and only wakes the loop through `call_soon_threadsafe`, once per empty→non-empty
    change. When the deque is full the paho thread blocks, so back-pressure reaches the broker's
    per-client queue (unlimited for the bridge) instead of dropping messages here.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = 50_000) -> None:
        self._loop = loop
        self._maxsize = maxsize
        self._items: deque[T] = deque()
        self._lock = threading.Condition()
        self._ready = asyncio.Event()
        self._closed = False

    def put(self, item: T) -> None:
        with self._lock:
            while len(self._items) >= self._maxsize and not self._closed:
                self._lock.wait(timeout=1.0)
            was_empty = not self._items
            self._items.append(item)
        if was_empty:
            self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self, max_items: int, wait_s: float | None = None) -> list[T]:
        """Wait for at least one item (or `wait_s`) and return up to `max_items`."""
        if not self._items:
            try:
                await asyncio.wait_for(self._ready.wait(), wait_s)
            except TimeoutError:
                return []
        with self._lock:
            count = min(max_items, len(self._items))
            batch = [self._items.popleft() for _ in range(count)]
            if not self._items:
                self._ready.clear()
            self._lock.notify_all()
        return batch

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
