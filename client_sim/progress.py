"""A live progress line on a terminal (refreshed every second), periodic log lines otherwise."""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TextIO

logger = logging.getLogger(__name__)


class ProgressDisplay:
    """Prints what `snapshot()` returns: counts by device state and message totals."""

    def __init__(self, snapshot: Callable[[], dict[str, int]], stream: TextIO, interval_s: float = 1.0,
                 log_every_s: float = 10.0) -> None:
        self.snapshot = snapshot
        self.stream = stream
        self.interval_s = interval_s
        self.log_every_s = log_every_s
        self.tty = stream.isatty()
        self._started = time.monotonic()
        self._last_published = 0
        self._last_tick = self._started
        self._last_log = self._started

    def line(self) -> str:
        now = time.monotonic()
        snap = self.snapshot()
        rate = (snap["published"] - self._last_published) / max(now - self._last_tick, 1e-6)
        self._last_published, self._last_tick = snap["published"], now
        return (
            f"{now - self._started:6.0f}s  connected {snap['connected']}/{snap['devices']}"
            f"  connecting {snap['connecting']}  backoff {snap['backoff']}  down {snap['down']}"
            f"  silent {snap['silent']}  |  {rate:7.0f} msg/s  heartbeats {snap['heartbeats']}"
            f"  status {snap['status_received']}"
        )

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.tick()
        finally:
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def tick(self) -> None:
        line = self.line()
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
        elif time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            logger.info("%s", line)
