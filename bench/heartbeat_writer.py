"""Devices' heartbeats written to Redis as the bridge writes them, in a thread, for a benchmark's load beside it.

Each device beats once every `heartbeat_interval_s`, the fleet spread evenly: every `TICK_S` the next
slice of the devices, round-robin, through `PresenceStore.heartbeats` (the bridge's own script).
"""

import asyncio
import threading
import time
from types import TracebackType

from redis.asyncio import Redis

from core.presence_store import PresenceStore, now_ms
from core.settings import Settings

TICK_S = 0.1
DEVICE = ("tablet", 1)  # the device id and epoch bench/batch_status.py puts online


class HeartbeatWriter:
    def __init__(self, settings: Settings, restaurant_ids: list[str]) -> None:
        self.settings = settings
        self.restaurant_ids = restaurant_ids
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat-writer", daemon=True)
        self._started = self._ended = 0.0

    def __enter__(self) -> "HeartbeatWriter":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._ended = time.monotonic()
        if self.error is not None and kind is None:
            raise RuntimeError("the heartbeat writer failed") from self.error

    def rate(self) -> float:
        """Heartbeats written per second while it ran."""
        return self.written / max((self._ended or time.monotonic()) - self._started, 1e-9)

    def _run(self) -> None:
        try:
            asyncio.run(self._beat())
        except BaseException as exc:  # reported by __exit__: a thread's error would be lost otherwise
            self.error = exc

    async def _beat(self) -> None:
        redis = Redis.from_url(self.settings.redis_url, decode_responses=True)
        store = PresenceStore(redis, self.settings.redis_prefix)
        ids = self.restaurant_ids
        per_tick = max(1, round(len(ids) * TICK_S / self.settings.heartbeat_interval_s))
        window_ms = int(self.settings.stale_after_s * 1000)
        at, next_tick = 0, time.monotonic()
        try:
            while not self._stop.is_set():
                chunk = [ids[(at + k) % len(ids)] for k in range(per_tick)]
                at = (at + per_tick) % len(ids)
                await store.heartbeats([(rid, *DEVICE) for rid in chunk], at_ms=now_ms(), window_ms=window_ms)
                self.written += len(chunk)
                next_tick += TICK_S
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        finally:
            await redis.aclose()
