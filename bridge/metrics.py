"""The bridge's Prometheus metrics, in a registry of its own (several bridges may share a process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("bridge_messages_total", "MQTT messages taken in", ["kind"], registry=r)
        self.invalid = Counter(
            "bridge_invalid_messages_total", "Messages dead-lettered, by reason", ["reason"], registry=r
        )
        self.ignored = Counter(
            "bridge_ignored_total", "Presence or heartbeats of an older or ended epoch", ["kind"], registry=r
        )
        self.device_transitions = Counter(
            "bridge_device_transitions_total", "DEVICE_ONLINE/DEVICE_OFFLINE written", ["type"], registry=r
        )
        self.status_changes = Counter("bridge_status_changes_total", "STATUS_CHANGED committed", registry=r)
        self.events_published = Counter("bridge_events_published_total", "Events confirmed by RabbitMQ", registry=r)
        self.held_restaurants = Gauge(
            "bridge_held_restaurants", "Restaurants whose events wait in Redis for RabbitMQ to come back", registry=r
        )
        self.batch_seconds = Histogram(
            "bridge_batch_seconds",
            "Time to apply one batch to Redis and publish its transitions",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.batch_size = Histogram(
            "bridge_batch_size", "Messages per batch", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000), registry=r
        )
        self.message_age = Histogram(
            "bridge_message_age_seconds",
            "From a device's payload ts (its clock) to the bridge applying it: births, graceful offlines,"
            " and the oldest heartbeat of each batch",
            ["kind"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.inbox_wait = Histogram(
            "bridge_inbox_wait_seconds",
            "From paho reading a batch's oldest message to the whole batch applied (events published, settled)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.horizon_lag = Gauge(
            "bridge_horizon_lag_seconds",
            "Age of the oldest message received and not yet applied (0 when none): clock boundaries wait for it",
            registry=r,
        )
        self.queue_depth = Gauge("bridge_handoff_depth", "Messages waiting between paho and the loop", registry=r)
        self.converged = Gauge("bridge_converged", "1 once the retained presence of every shard is read", registry=r)
        self.reconcile_seconds = Gauge(
            "bridge_reconcile_seconds", "Time from start to convergence on retained presence", registry=r
        )
        self.retries = Counter(
            "bridge_batch_retries_total", "Batch retries while a backing service was away", registry=r
        )
        self.stale_marked = Counter("bridge_stale_marked_total", "Devices marked stale by the sweep", registry=r)
        self.unsettled_settles = Counter(
            "bridge_unsettled_settles_total",
            "Restaurants settled before a message of theirs was applied: earlier facts were never settled "
            "(a writer died, or a batch failed, between applying them and settling)",
            registry=r,
        )
        self.retained_republished = Counter(
            "bridge_retained_republished_total",
            "Committed statuses published again: another writer's newer one may have landed before an older one",
            registry=r,
        )
