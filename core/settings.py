"""The one reader of the environment: every process builds a `Settings` at its entry point."""

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changethis", "secret", "password"}


class Settings(BaseSettings):
    """Loopback defaults that match `make run`; override with PRESENCE_* variables."""

    model_config = SettingsConfigDict(env_prefix="PRESENCE_", env_file=None, extra="ignore")

    environment: str = "local"
    var_dir: Path = Path("var")

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key starts with this, so tests and several platforms can share one server.
    redis_prefix: str = "presence:"

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Prepended to every exchange and queue name, for the same isolation on one RabbitMQ.
    amqp_prefix: str = ""
    exchange_name: str = "KEEPALIVE_EVENTS"
    dashboard_queue: str = "STREAM_REALTIME_DASHBOARD"
    aggregator_queue: str = "STREAM_EVENT_AGGREGATOR"
    mqtt_dead_letter_queue: str = "MQTT_DEAD_LETTERS"

    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = "presence"

    # One URL per broker shard: mqtt://host:port (TCP) or ws://host:port (WebSocket).
    # From the environment: a JSON list or comma-separated URLs (NoDecode lets split_lists see the text).
    mqtt_brokers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    mqtt_username: str = "platform"
    mqtt_password: str = "platform-local-only"
    mqtt_shared_group: str = "bridge"
    # A restarted bridge finds what arrived meanwhile in its MQTT 5 session if it returns within this.
    bridge_session_expiry_s: float = 60.0
    # A shard's retained state counts as read once no retained message has come for this long after
    # SUBACK (MQTT marks no end of it). Brokers send it in one burst; the tests use less.
    bridge_retained_quiet_s: float = 1.0
    # After SIGTERM, a batch that still meets an outage for this long is left unacknowledged (its
    # session keeps it for the next bridge) and the bridge exits.
    bridge_stop_give_up_s: float = 30.0
    # After SIGTERM, the bridge applies what it has read for at most this long; the rest is left
    # unacknowledged for its session, so its stop ends within a deployment's grace period (30 s).
    bridge_stop_drain_s: float = 15.0
    # "auto": MQTT 5 shared subscriptions where the broker speaks MQTT 5, plain 3.1.1 elsewhere.
    mqtt_protocol: str = "auto"
    mosquitto_passwd_file: Path = Path("var/mosquitto/passwd")

    heartbeat_interval_s: float = 30.0
    stale_after_s: float = 120.0
    sweep_interval_s: float = 1.0
    heartbeat_batch_max: int = 2000
    # On a takeover Mosquitto publishes the old session's will right before the new birth; holding a
    # will this long lets the birth win first, so the restaurant shows no false offline.
    will_grace_s: float = 0.5
    max_payload_bytes: int = 1024

    default_timezone: str = "America/Sao_Paulo"

    jwt_secret: str = "local-development-only-jwt-secret-change-me"
    jwt_algorithm: str = "HS256"
    token_ttl_s: int = 3600
    max_status_ids: int = 10_000

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    bridge_metrics_port: int = 9102

    # --- unavailabilities and restaurant admin (api/routes/unavailabilities.py, restaurants.py) ---
    unavailability_max_days: float = 90.0  # longest single unavailability
    unavailability_max_ahead_days: float = 366.0  # how far ahead one may start
    unavailability_max_note_chars: int = 500
    # Scheduled or ongoing ones per restaurant: each is carried in the Redis profile read on every status.
    unavailability_max_pending: int = 100
    # A start this far in the past still counts as "now" (clocks of browsers and tablets drift).
    unavailability_past_tolerance_s: float = 60.0
    # A request waits this long for RabbitMQ's confirm; past it the event stays in the Redis outbox.
    event_publish_timeout_s: float = 5.0

    # --- scheduler (scheduler/) ---
    # Claimed restaurants are held this long; a scheduler that dies mid-batch leaves them due again after it.
    scheduler_lease_s: float = 30.0
    scheduler_batch_size: int = 1000  # restaurants per claim (10:00 opens 100,000 at once)
    # A claim is settled as one batch (one read pipeline, one commit pipeline, confirms awaited together);
    # this bounds only the one-by-one settles: versions that moved mid-batch, retries after an outage.
    scheduler_concurrency: int = 100
    scheduler_safety_interval_s: float = 5.0  # look at the clock queue at least this often
    scheduler_rebuild_interval_s: float = 600.0  # re-read every profile from MongoDB this often
    scheduler_leader_ttl_s: float = 10.0  # a dead leader's lock expires after this; a follower then acts
    # Outbox entries older than this are republished by the periodic rebuild (their writer is gone).
    scheduler_outbox_grace_s: float = 60.0
    scheduler_metrics_port: int = -1  # Prometheus /metrics on 127.0.0.1; -1 = off

    # --- aggregator and history (aggregator/, core/timeline.py, core/history*.py) ---
    # How often an idle aggregator or feed looks at its queue: messages ready on two looks in a row and
    # none delivered meanwhile means RabbitMQ no longer delivers to it, and it subscribes again.
    consumer_watch_s: float = 5.0
    aggregator_batch_max: int = 200  # messages taken from RabbitMQ (and written) at a time
    aggregator_profile_ttl_s: float = 60.0  # a restaurant's group is re-read from MongoDB this often
    aggregator_metrics_port: int = 9104  # Prometheus /metrics on 127.0.0.1; 0: any free port, -1: none
    timeline_max_days: int = 31  # longest GET /restaurants/{rid}/timeline range
    ranking_max_days: int = 92  # longest GET /reports/offline-ranking period

    # --- dashboard feed and websocket (feed/, api/routes/dashboard_ws.py) ---
    # Entries kept in the Redis stream: a dashboard away for longer than this many status changes gets
    # a reset and a new snapshot instead of the missed ones.
    feed_stream_maxlen: int = 100_000
    # How long an event_id is remembered with its seq, so a redelivered event gets no second one.
    feed_dedup_ttl_s: int = 3600
    feed_batch_max: int = 200  # messages taken from RabbitMQ (and written) at a time
    feed_metrics_port: int = 9103  # 0: any free port, -1: none
    dashboard_heartbeat_s: float = 15.0
    # Frames waiting for one websocket; a client that falls this far behind is reset to a snapshot.
    dashboard_socket_queue: int = 1000

    # --- login rate limit (api/login_limiter.py) ---
    # Failed POST /auth/token per username, and separately per client IP, within the window: then 429.
    login_max_failures: int = 10
    login_failure_window_s: int = 300

    # --- pages and browser client (web/, api/routes/pages.py) ---
    # What a browser is told to dial, one per shard in mqtt_brokers' order: the brokers' WebSocket
    # listeners as the browser sees them (behind a proxy, not the addresses the bridge uses).
    public_mqtt_ws_urls: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["ws://127.0.0.1:9001"])

    @field_validator("public_mqtt_ws_urls")
    @classmethod
    def check_public_ws_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("ws://", "wss://")):
                raise ValueError(f"browser MQTT URL {url!r} must start with ws:// or wss://")
        return value

    @field_validator("jwt_secret", "mqtt_password")
    @classmethod
    def reject_placeholder(cls, value: str) -> str:
        if value.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("a placeholder secret is not allowed; set a real one")
        return value

    @field_validator("mqtt_brokers", "public_mqtt_ws_urls", mode="before")
    @classmethod
    def split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("mqtt_brokers")
    @classmethod
    def check_broker_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("mqtt://", "ws://")):
                raise ValueError(f"broker URL {url!r} must start with mqtt:// or ws://")
        if not value:
            raise ValueError("at least one MQTT broker is needed")
        return value

    def amqp_name(self, name: str) -> str:
        return f"{self.amqp_prefix}{name}"

    @cached_property
    def exchange(self) -> str:
        return self.amqp_name(self.exchange_name)
