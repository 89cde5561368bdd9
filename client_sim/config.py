"""What a simulator run does: one dataclass shared by the CLI, the tests and the benchmarks."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Scenario = Literal["steady", "churn", "storm"]
SCENARIOS: tuple[Scenario, ...] = ("steady", "churn", "storm")
TruthHeartbeats = Literal["edges", "all"]

# Relative weights of the churn actions (see scenario.py for what each one does).
DEFAULT_CHURN_MIX = {"crash": 1.0, "graceful": 1.0, "takeover": 1.0, "silent": 1.0, "flap": 1.0}


@dataclass(slots=True)
class SimConfig:
    brokers: list[str] = field(default_factory=lambda: ["mqtt://127.0.0.1:1883"])
    devices_per_restaurant: int = 1
    scenario: Scenario = "steady"
    duration_s: float = 60.0
    # steady/churn start devices evenly over the ramp; storm starts each at a random instant in it.
    ramp_s: float = 10.0
    heartbeat_interval_s: float = 30.0
    keepalive_s: int = 60
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    # A connection that lasted this long resets the backoff; a shorter one keeps it growing, so a
    # broker that accepts and then drops clients cannot pull them into a tight reconnect loop.
    stable_after_s: float = 10.0
    # Generous: under a storm the broker may take a while, and giving up early only adds reconnects.
    connack_timeout_s: float = 30.0
    graceful_timeout_s: float = 5.0
    churn_rate: float = 1.0
    churn_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CHURN_MIX))
    downtime_s: tuple[float, float] = (5.0, 60.0)
    silent_s: tuple[float, float] = (60.0, 300.0)
    seed: int | None = None
    truth_path: Path | None = None
    # "edges" logs the first heartbeat of every run of them and the last one when the run ends
    # (enough to know last_seen at any instant); "all" logs every heartbeat.
    truth_heartbeats: TruthHeartbeats = "edges"
    connect_threads: int = 16
    # Local addresses to connect from, spread over the devices (e.g. 127.0.0.2 … 127.0.0.9). One
    # source address has ~28,000 ephemeral ports and the kernel's search for a free one gets slow
    # well before that; several loopback sources keep tens of thousands of connections cheap.
    bind_addresses: list[str] = field(default_factory=list)
    device_prefix: str = "dev-"
    # Unavailabilities scheduled through the API (client_sim/schedules.py): none without an API URL.
    api_url: str | None = None
    schedule_rate: float = 0.0  # per second, over all restaurants
    schedule_lead_s: tuple[float, float] = (0.0, 30.0)  # below 1 s the unavailability starts "now"
    schedule_length_s: tuple[float, float] = (10.0, 120.0)
    cancel_share: float = 0.3  # of them cancelled at a random instant before they end

    def device_ids(self) -> list[str]:
        return [f"{self.device_prefix}{index}" for index in range(1, self.devices_per_restaurant + 1)]
