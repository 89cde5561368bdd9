"""The scheduler's Prometheus metrics, in a registry of its own (tests run two schedulers in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leader = Gauge("scheduler_leader", "1 while this scheduler holds the leader lock", registry=r)
        self.claimed = Counter("scheduler_claimed_total", "Restaurants claimed from the clock queue", registry=r)
        self.batch_size = Histogram(
            "scheduler_batch_size",
            "Restaurants per claim",
            buckets=(1, 10, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "scheduler_batch_seconds",
            "Time to settle, publish and reschedule one claimed batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.status_changes = Counter(
            "scheduler_status_changes_total", "STATUS_CHANGED committed and confirmed by RabbitMQ", registry=r
        )
        self.retained_acked = Counter(
            "scheduler_retained_acked_total", "Retained statuses acknowledged by the broker", registry=r
        )
        self.retained_republished = Counter(
            "scheduler_retained_republished_total",
            "Committed statuses published again: another writer's newer one may have landed before an older one",
            registry=r,
        )
        self.horizon_lag = Gauge(
            "scheduler_horizon_lag_seconds",
            "How far behind the wall clock the bridges' horizon held the last claim (core/horizons.py)",
            registry=r,
        )
        self.retained_pending = Gauge(
            "scheduler_retained_pending", "Retained statuses handed to MQTT and not yet acknowledged", registry=r
        )
        self.failures = Counter(
            "scheduler_restaurant_failures_total",
            "Restaurants whose settle failed (retried after the lease)",
            registry=r,
        )
        self.retries = Counter(
            "scheduler_retries_total", "Retries while Redis, RabbitMQ or MongoDB was away", registry=r
        )
        self.outbox_republished = Counter(
            "scheduler_outbox_republished_total", "Events republished from an outbox left behind", registry=r
        )
        self.held_restaurants = Gauge(
            "scheduler_held_restaurants",
            "Restaurants whose STATUS_CHANGED wait in their Redis outbox for RabbitMQ to come back",
            registry=r,
        )
        self.rebuilds = Counter("scheduler_rebuilds_total", "Rebuilds from MongoDB completed", registry=r)
        self.rebuild_seconds = Gauge("scheduler_rebuild_seconds", "Duration of the last rebuild", registry=r)
        self.profiles_written = Counter(
            "scheduler_profiles_written_total", "Profiles Redis lacked or held differently, rewritten", registry=r
        )
