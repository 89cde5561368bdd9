"""What the devices of one simulator share: the loop integration, the log, the dice, the counters."""

import random
from dataclasses import dataclass, field
from enum import StrEnum

from client_sim.config import SimConfig
from client_sim.ground_truth import TruthLog
from client_sim.mqtt_pump import MqttPump


class DeviceState(StrEnum):
    IDLE = "idle"  # never started
    CONNECTING = "connecting"  # CONNECT on its way, no CONNACK yet
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting to reconnect after an unexpected drop
    STOPPING = "stopping"  # graceful offline sent, waiting to disconnect
    DOWN = "down"  # crashed or stopped by the scenario; restarts when told
    STOPPED = "stopped"  # the run is over


@dataclass(slots=True)
class SimStats:
    published: int = 0
    heartbeats: int = 0
    births: int = 0
    connacks: int = 0
    refused: int = 0
    connect_failures: int = 0
    connections_lost: int = 0
    status_received: int = 0
    unexpected_messages: int = 0  # on a topic other than the restaurant's status: a broker bug
    actions: dict[str, int] = field(default_factory=dict)
    schedules: dict[str, int] = field(default_factory=dict)  # unavailabilities through the API


@dataclass(slots=True)
class DeviceContext:
    """What every device of one simulator shares."""

    config: SimConfig
    pump: MqttPump
    truth: TruthLog
    rng: random.Random
    stats: SimStats
