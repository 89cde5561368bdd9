"""Bad MQTT input: counted, logged once, kept byte for byte in RabbitMQ; never fatal."""

import logging
import time

from bridge.metrics import BridgeMetrics
from core.amqp import EventPublisher

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # a flood of bad input is summarised, not logged line by line


class DeadLetters:
    def __init__(self, publisher: EventPublisher, metrics: BridgeMetrics) -> None:
        self.publisher = publisher
        self.metrics = metrics
        self._last_log = 0.0
        self._suppressed = 0

    async def reject(self, topic: str, payload: bytes, reason: str, detail: str = "") -> None:
        self.metrics.invalid.labels(reason).inc()
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            logger.warning(
                "dead-lettered %s on %r: %s (%d more since the last line)",
                reason, topic[:200], detail[:200], self._suppressed,
            )
            self._last_log, self._suppressed = now, 0
        else:
            self._suppressed += 1
        await self.publisher.dead_letter(payload, {"topic": topic[:1024], "reason": reason, "detail": detail[:1024]})
