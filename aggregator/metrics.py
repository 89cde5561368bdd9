"""The aggregator's Prometheus metrics, in a registry of its own (tests run several in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AggregatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "aggregator_events_total",
            "Events taken from the aggregator queue, by outcome: applied, duplicate (already in the history), "
            "ignored (not STATUS_CHANGED), dead_lettered",
            ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "aggregator_dead_letters_total", "Messages sent to the dead-letter queue, by reason", ["reason"], registry=r
        )
        self.resubscribed = Counter(
            "aggregator_resubscribed_total",
            "Times RabbitMQ had stopped delivering to this worker while its queue had messages ready, and it "
            "subscribed again",
            registry=r,
        )
        self.retries = Counter("aggregator_batch_retries_total", "Batch retries while MongoDB was away", registry=r)
        self.rollups = Counter("aggregator_rollups_written_total", "Ranking day rollups rewritten", registry=r)
        self.batch_seconds = Histogram("aggregator_batch_seconds", "Time to write one batch", registry=r)
        self.standby = Gauge(
            "aggregator_standby", "1 while another aggregator is the queue's consumer and this one waits", registry=r
        )

    def count(self, outcome: str, amount: int = 1) -> None:
        if amount:
            self.events.labels(outcome).inc(amount)

    def value(self, outcome: str) -> float:
        return self.registry.get_sample_value("aggregator_events_total", {"outcome": outcome}) or 0.0
