"""The one reader of the environment: every process builds a `Settings` at its entry point."""

from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    mqtt_brokers: list[str] = Field(default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    mqtt_username: str = "platform"
    mqtt_password: str = "platform-local-only"
    mqtt_shared_group: str = "bridge"
    # A restarted bridge finds what arrived meanwhile in its MQTT 5 session if it returns within this.
    bridge_session_expiry_s: float = 60.0
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

    @field_validator("jwt_secret", "mqtt_password")
    @classmethod
    def reject_placeholder(cls, value: str) -> str:
        if value.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("a placeholder secret is not allowed; set a real one")
        return value

    @field_validator("mqtt_brokers", mode="before")
    @classmethod
    def split_brokers(cls, value: object) -> object:
        if isinstance(value, str) and not value.lstrip().startswith("["):
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
