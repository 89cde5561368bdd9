"""Bad MQTT input: counted, logged once, kept byte for byte in RabbitMQ; never fatal.

While RabbitMQ is away a dead letter waits in a Redis list (`{prefix}dead`) instead of holding up the
batch it came in: a retried batch would stop the bridge from applying heartbeats, and the devices would
be taken for silent because of one bad message and an outage. The list is published, oldest first,
once RabbitMQ answers again (also by the next bridge, should this one stop first). Once one letter
waits there, later ones queue behind it. The letters of one batch are published together, so within
a batch RabbitMQ may take them in another order, and those it refused wait in Redis in theirs.
"""

import asyncio
import base64
import json
import logging
import math
import time
from collections.abc import Sequence

from redis.asyncio import Redis

from bridge.metrics import BridgeMetrics
from core.amqp import PUBLISH_OUTAGES, EventPublisher

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # a flood of bad input is summarised, not logged line by line
FLUSH_CHUNK = 100
PUBLISH_AT_ONCE = 200


class DeadLetters:
    def __init__(
        self, publisher: EventPublisher, redis: Redis, prefix: str, metrics: BridgeMetrics, timeout_s: float
    ) -> None:
        self.publisher = publisher
        self.redis = redis
        self.key = f"{prefix}dead"
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.waiting = False  # some wait in Redis: new ones queue behind them
        self._last_log = -math.inf  # the first one is logged, however young the machine's monotonic clock
        self._suppressed = 0

    async def recover(self) -> None:
        """At start: are there letters an earlier bridge left in Redis?"""
        self.waiting = bool(await self.redis.llen(self.key))

    async def reject_all(self, letters: Sequence[tuple[str, bytes, str, str]]) -> None:
        """(topic, payload, reason, detail) each: counted, logged (a flood summarised) and published
        together, up to `PUBLISH_AT_ONCE` confirms awaited at a time: one by one, a flood of 10,000 bad
        messages held the bridge's batches (and the good messages in them) for ~40 s."""
        if not letters:
            return
        kept: list[tuple[bytes, dict[str, str]]] = []
        for topic, payload, reason, detail in letters:
            self._count(topic, reason, detail)
            kept.append((payload, {"topic": topic[:1024], "reason": reason, "detail": detail[:1024]}))
        if self.waiting:
            failed = kept  # queue behind the letters already waiting in Redis
        else:
            failed = []
            for start in range(0, len(kept), PUBLISH_AT_ONCE):
                chunk = kept[start : start + PUBLISH_AT_ONCE]
                sent = await asyncio.gather(*(self._publish(payload, headers) for payload, headers in chunk))
                failed += [letter for letter, ok in zip(chunk, sent, strict=True) if not ok]
        if failed:
            encoded = [json.dumps({"payload": base64.b64encode(p).decode(), "headers": h}) for p, h in failed]
            await self.redis.rpush(self.key, *encoded)  # Redis away too: the batch is retried
            self.waiting = True

    def _count(self, topic: str, reason: str, detail: str) -> None:
        self.metrics.invalid.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            logger.warning(
                "dead-lettered %s on %r: %s (%d more since the last line)",
                reason, topic[:200], detail[:200], self._suppressed,
            )  # fmt: skip
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1

    async def flush(self) -> None:
        """Publish the letters waiting in Redis, oldest first; stops at the first failure (call again)."""
        while True:
            letters = await self.redis.lrange(self.key, 0, FLUSH_CHUNK - 1)
            if not letters:
                self.waiting = False  # no await since the read: a letter after it is published directly
                return
            for done, raw in enumerate(letters):
                letter = json.loads(raw)
                if not await self._publish(base64.b64decode(letter["payload"]), letter["headers"]):
                    await self.redis.ltrim(self.key, done, -1)
                    return
            await self.redis.ltrim(self.key, len(letters), -1)

    async def _publish(self, payload: bytes, headers: dict[str, str]) -> bool:
        try:
            await asyncio.wait_for(self.publisher.dead_letter(payload, headers), self.timeout_s)
        except PUBLISH_OUTAGES:
            return False
        return True
