"""The five backing servers of the platform as one unit, for the test session and `make run`."""

from dataclasses import dataclass
from pathlib import Path

from core.mqtt_passwords import hash_password, upsert_password_entries
from stack.process import Service, free_ports, start_all, stop_all
from stack.services import Amqtt, FerretDB, Mosquitto, RabbitMQ, Redis


@dataclass(frozen=True)
class BackendPorts:
    redis: int
    amqp: int
    amqp_dist: int
    mongo: int
    mqtt: int
    mqtt_ws: int
    amqtt: int
    amqtt_ws: int

    @classmethod
    def free(cls) -> "BackendPorts":
        return cls(*free_ports(8))

    @classmethod
    def fixed(cls) -> "BackendPorts":
        """The ports of docs/architecture.md for `make run`."""
        return cls(redis=6379, amqp=5672, amqp_dist=25672, mongo=27017, mqtt=1883, mqtt_ws=9001,
                   amqtt=1884, amqtt_ws=9002)  # fmt: skip


class Backends:
    """Redis, RabbitMQ, FerretDB, Mosquitto and (when `broker/` has its CLI) amqtt under one root."""

    def __init__(
        self,
        root: Path,
        ports: BackendPorts,
        *,
        platform_user: str,
        platform_password: str,
        ferretdb_bin: Path | None = None,
        with_amqtt: bool | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.ports = ports
        self.platform_user = platform_user
        self.platform_password = platform_password
        self.passwd_file = self.root / "mosquitto" / "passwd"
        self.redis = Redis(self.root / "redis", ports.redis)
        self.rabbitmq = RabbitMQ(self.root / "rabbitmq", ports.amqp, ports.amqp_dist)
        self.ferretdb = FerretDB(self.root / "ferretdb", ports.mongo, ferretdb_bin)
        self.mosquitto = Mosquitto(
            self.root / "mosquitto",
            ports.mqtt,
            ports.mqtt_ws,
            self.passwd_file,
            platform_user,
            pid_file=self.root / "run" / "mosquitto.pid",
        )
        use_amqtt = Amqtt.available() if with_amqtt is None else with_amqtt
        self.amqtt: Amqtt | None = (
            Amqtt(self.root / "amqtt", ports.amqtt, ports.amqtt_ws, self.passwd_file, platform_user)
            if use_amqtt
            else None
        )
        if log_dir is not None:
            for service in self.services:
                service.log_dir = Path(log_dir).resolve()

    @property
    def services(self) -> list[Service]:
        # RabbitMQ first: it boots slowest, and the others start while it does.
        services: list[Service] = [self.rabbitmq, self.redis, self.ferretdb, self.mosquitto]
        if self.amqtt is not None:
            services.append(self.amqtt)
        return services

    def start(self) -> None:
        upsert_password_entries(self.passwd_file, {self.platform_user: hash_password(self.platform_password)})
        start_all(self.services)

    def stop(self) -> None:
        stop_all(self.services)

    def reload_brokers(self) -> None:
        """Make both brokers see the current password file: SIGHUP Mosquitto (amqtt watches the mtime)."""
        self.mosquitto.reload()

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def amqp_url(self) -> str:
        return self.rabbitmq.url

    @property
    def mongo_url(self) -> str:
        return self.ferretdb.url

    @property
    def mosquitto_url(self) -> str:
        return self.mosquitto.url

    @property
    def mosquitto_ws_url(self) -> str:
        return self.mosquitto.ws_url

    @property
    def amqtt_url(self) -> str | None:
        return self.amqtt.url if self.amqtt else None

    @property
    def amqtt_ws_url(self) -> str | None:
        return self.amqtt.ws_url if self.amqtt else None
