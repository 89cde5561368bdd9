"""Broker URLs (`mqtt://host:port`, `ws://host:port[/path]`) and which one a restaurant uses."""

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from core.errors import ConfigError
from core.shards import broker_for

_DEFAULT_PORTS = {"mqtt": 1883, "ws": 9001}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    url: str
    transport: Literal["tcp", "websockets"]
    host: str
    port: int
    path: str


def parse_broker_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"broker URL {url!r} must look like mqtt://host:port or ws://host:port")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} has a bad port") from exc
    transport: Literal["tcp", "websockets"] = "tcp" if parts.scheme == "mqtt" else "websockets"
    return BrokerAddress(url, transport, parts.hostname, port, parts.path or "/mqtt")


def loopback_sources(count: int) -> list[str]:
    """127.0.0.2, 127.0.0.3, …: extra local addresses to connect from (see SimConfig.bind_addresses)."""
    if not 0 <= count <= 250:
        raise ConfigError("between 0 and 250 loopback source addresses")
    return [f"127.0.0.{index}" for index in range(2, count + 2)]


def broker_of(restaurant_id: str, brokers: list[str]) -> BrokerAddress:
    """The same restaurant → shard mapping as the bridge (`core.shards.broker_for`)."""
    return parse_broker_url(broker_for(restaurant_id, brokers))
