"""The feed worker's Prometheus metrics, in a registry of its own (tests run several in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge


class FeedMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "feed_events_total",
            "Events taken from the dashboard queue, by outcome: sequenced, duplicate (redelivered), "
            "stale (older than the restaurant's status already fed), ignored (not STATUS_CHANGED), dead_lettered",
            ["outcome"],
            registry=r,
        )
        self.resubscribed = Counter(
            "feed_resubscribed_total",
            "Times RabbitMQ had stopped delivering to this worker while its queue had messages ready, and it "
            "subscribed again",
            registry=r,
        )
        self.retries = Counter("feed_batch_retries_total", "Batch retries while Redis or MongoDB was away", registry=r)
        self.last_seq = Gauge("feed_last_seq", "The last sequence number this worker gave out", registry=r)

    def count(self, outcome: str, amount: int = 1) -> None:
        if amount:
            self.events.labels(outcome).inc(amount)

    def value(self, outcome: str) -> float:
        return self.registry.get_sample_value("feed_events_total", {"outcome": outcome}) or 0.0
