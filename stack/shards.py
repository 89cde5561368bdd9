"""N Mosquitto shards on loopback: one process and configuration each, the same password file and ACL.

One Mosquitto process may hold fewer than 20,000 open files on these machines, so 100,000 device
sessions need several brokers. Restaurants are assigned to them by `core.shards.shard_of`; the
bridge takes `urls` as its `mqtt_brokers` and client_sim gets the same list (`--broker` per shard).
Against a real MQTT cluster the same code takes the cluster's listener URLs instead (docs/scaling.md).
"""

import contextlib
from pathlib import Path

from stack.process import free_ports, start_all, stop_all
from stack.services import Mosquitto


class MosquittoShards:
    """`count` Mosquitto processes under `root/mosquitto-shard-<n>`; started together, stopped by PID."""

    def __init__(self, root: Path, count: int, password_file: Path, platform_user: str) -> None:
        if count < 1:
            raise ValueError("at least one shard")
        ports = free_ports(2 * count)
        self.brokers = [
            Mosquitto(Path(root) / f"mosquitto-shard-{n}", ports[2 * n], ports[2 * n + 1], password_file, platform_user)
            for n in range(count)
        ]
        for n, broker in enumerate(self.brokers):
            broker.name = f"mosquitto-shard-{n}"

    def __enter__(self) -> "MosquittoShards":
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        start_all(list(self.brokers))

    def stop(self) -> None:
        stop_all(list(self.brokers))

    def reload(self) -> None:
        """Every shard re-reads the password file (after restaurants were added)."""
        for broker in self.brokers:
            broker.reload()

    @property
    def urls(self) -> list[str]:
        return [broker.url for broker in self.brokers]

    @property
    def pids(self) -> list[int]:
        return [broker.pid for broker in self.brokers if broker.pid is not None]

    def open_files(self) -> list[int]:
        """Open descriptors of each shard process (what the 20,000 limit counts)."""
        counts = []
        for pid in self.pids:
            with contextlib.suppress(OSError):
                counts.append(sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()))
        return counts
