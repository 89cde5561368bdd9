"""What the embedded broker listens on and which plugins it loads, as an amqtt `BrokerConfig`."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.contexts import BrokerConfig, ListenerConfig, ListenerType

from broker.acl_plugin import TopicAclPlugin, WillAclPlugin
from broker.auth_plugin import PasswordFileAuthPlugin

DEFAULT_PORT = 1884
DEFAULT_WS_PORT = 9002


@dataclass(frozen=True)
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ws_port: int | None = DEFAULT_WS_PORT  # None: no WebSocket listener
    passwd_file: Path = Path("var/mosquitto/passwd")
    platform_user: str = "platform"


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _dotted(plugin: type) -> str:
    return f"{plugin.__module__}.{plugin.__qualname__}"


def broker_config(options: BrokerOptions) -> BrokerConfig:
    """Authenticated TCP (and WebSocket) listeners; only our plugins, so no anonymous access, no $SYS."""
    listeners = {"default": ListenerConfig(type=ListenerType.TCP, bind=_bind(options.host, options.port))}
    if options.ws_port:
        listeners["ws"] = ListenerConfig(type=ListenerType.WS, bind=_bind(options.host, options.ws_port))
    plugins: dict[str, Any] = {
        _dotted(PasswordFileAuthPlugin): {
            "password_file": str(options.passwd_file),
            "platform_user": options.platform_user,
        },
        _dotted(WillAclPlugin): {"platform_user": options.platform_user},
        _dotted(TopicAclPlugin): {"platform_user": options.platform_user},
    }
    return BrokerConfig(listeners=listeners, plugins=plugins)
