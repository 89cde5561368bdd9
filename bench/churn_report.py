"""The churn run's configuration and its report: checkpoints, divergences, ranking and transition checks,
as a summary and as benchmark rows (bench/churn.py runs it)."""

import json
from dataclasses import dataclass, field
from typing import Any

from bench.report import Row

RANKING_TOLERANCE_S = 1.0


@dataclass
class ChurnConfig:
    restaurants: int = 200  # always open (00:00–24:00 every day)
    closed: int = 5  # closed every day: CLOSED whatever their devices do
    boundary: int = 5  # open for one minute that begins during the run (UTC): the scheduler's boundaries
    duration_s: float = 75.0
    ramp_s: float = 5.0
    checkpoint_every_s: float = 15.0
    churn_rate: float = 4.0  # actions per second over all devices
    heartbeat_interval_s: float = 2.0
    stale_after_s: float = 8.0
    silent_s: tuple[float, float] = (3.0, 15.0)
    downtime_s: tuple[float, float] = (1.0, 8.0)
    backoff_cap_s: float = 4.0
    schedule_rate: float = 0.3  # unavailabilities per second through the API
    schedule_lead_s: tuple[float, float] = (0.0, 10.0)
    schedule_length_s: tuple[float, float] = (3.0, 20.0)
    seed: int = 7
    settle_timeout_s: float = 120.0  # after the run: queues drained and the tap quiet

    @classmethod
    def full(cls) -> "ChurnConfig":
        """10,000 restaurants for 10 minutes at the product's own windows, a checkpoint a minute."""
        return cls(restaurants=10_000, closed=20, boundary=20, duration_s=600.0, ramp_s=60.0, checkpoint_every_s=60.0,
                   churn_rate=15.0, heartbeat_interval_s=30.0, stale_after_s=120.0, silent_s=(60.0, 300.0),
                   downtime_s=(5.0, 60.0), backoff_cap_s=30.0, schedule_rate=1.0, schedule_lead_s=(0.0, 60.0),
                   schedule_length_s=(30.0, 240.0), settle_timeout_s=600.0)  # fmt: skip


@dataclass
class Divergence:
    checkpoint: int
    at: str
    restaurant_id: str
    api: str
    truth: str
    detail: str = ""


@dataclass
class Checkpoint:
    index: int
    t0: float
    t1: float
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""
    during_fault: str = ""
    checked: int = 0
    in_window: int = 0
    divergent: int = 0


@dataclass
class FaultRecord:
    name: str
    started_s: float = 0.0  # since the run's start
    recovered_s: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class ChurnReport:
    restaurants: int
    duration_s: float
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    fault_divergences: int = 0  # in checkpoints taken during a fault (reported, not counted)
    ranking_checked: int = 0
    ranking_off: list[dict[str, Any]] = field(default_factory=list)  # beyond the tolerance
    ranking_max_error_s: float = 0.0
    ranking_unknowable: int = 0  # restaurants with seconds the platform could not know (between two truths)
    ranking_unknowable_max_s: float = 0.0  # the widest such span
    transitions: int = 0
    after_settle: int = 0  # STATUS_CHANGED later than the settle (scheduled boundaries): not looked for
    redelivered: int = 0  # the same event_id again (allowed: consumers are idempotent)
    doubled: list[dict[str, Any]] = field(default_factory=list)  # two STATUS_CHANGED with one status in a row
    lost_in_history: list[dict[str, Any]] = field(default_factory=list)
    extra_in_history: list[dict[str, Any]] = field(default_factory=list)
    # STATUS_CHANGED of a status begun long before its restaurant existed: a scheduler settling as of a
    # horizon of 0 walked every restaurant from 1970 (the aggregator keeps such points at the creation).
    before_creation: list[dict[str, Any]] = field(default_factory=list)
    lost_in_feed: list[dict[str, Any]] = field(default_factory=list)
    doubled_in_feed: list[dict[str, Any]] = field(default_factory=list)
    feed_checked: bool = True
    sim: dict[str, Any] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    blind: list[dict[str, Any]] = field(default_factory=list)  # Blind stretches, seconds since the run's start
    detection: dict[str, float] = field(default_factory=dict)
    lag: dict[str, float | None] = field(default_factory=dict)  # the simulator's loop, the bridge's message age
    log_problems: dict[str, list[str]] = field(default_factory=dict)
    bridge_story: list[str] = field(default_factory=list)  # when something was off: how the bridges went
    consumer_story: list[str] = field(default_factory=list)  # when events were lost: how the consumers went
    seconds: float = 0.0

    @property
    def lost_transitions(self) -> int:
        return len(self.lost_in_history) + len(self.doubled)

    def summary(self) -> str:
        lines = [
            f"churn: {self.restaurants} restaurants, {self.duration_s:.0f} s, {len(self.checkpoints)} checkpoints",
            f"  divergences: {len(self.divergences)} (during faults, not counted: {self.fault_divergences})",
            f"  ranking: {self.ranking_checked} restaurants, {len(self.ranking_off)} off by > {RANKING_TOLERANCE_S} s,"
            f" largest error {self.ranking_max_error_s:.3f} s; {self.ranking_unknowable} with seconds the platform"
            f" could not know (at most {self.ranking_unknowable_max_s:.1f} s, tolerated)",
            f"  transitions: {self.transitions} STATUS_CHANGED, {self.redelivered} redelivered, {len(self.doubled)}"
            f" doubled, {len(self.lost_in_history)} lost in the history, {len(self.extra_in_history)} extra there,"
            f" {self.after_settle} after the settle (not looked for), {len(self.before_creation)} begun before"
            " their restaurant existed",
            f"  feed: {len(self.lost_in_feed)} missing, {len(self.doubled_in_feed)} doubled"
            + ("" if self.feed_checked else " (not checked: its stream lived in the Redis that was lost)"),
            f"  detection: {json.dumps(self.detection)}",
            f"  blind (s since the start): {json.dumps(self.blind)}",
            f"  lag: {json.dumps(self.lag)}",
            f"  simulator: {json.dumps(self.sim.get('actions', {}))} schedules {json.dumps(self.sim.get('schedules'))}",
        ]
        for fault in self.faults:
            lines.append(f"  fault {fault.name}: at {fault.started_s:.1f} s, recovered at {fault.recovered_s:.1f} s "
                         f"{json.dumps(fault.figures)}")  # fmt: skip
        for d in self.divergences[:20]:
            lines.append(f"  DIVERGENCE cp{d.checkpoint} {d.at} {d.restaurant_id}: api {d.api} truth {d.truth}"
                         f" {d.detail}")
        found = self.lost_in_history + self.doubled + self.extra_in_history + self.before_creation[:3]
        for item in (found + self.ranking_off)[:20]:
            lines.append(f"  PROBLEM {json.dumps(item, default=str)}")
        for name, problems in self.log_problems.items():
            for line in problems[:3]:
                lines.append(f"  log {name}: {line[:160]}")
        lines += [f"  bridge: {line[:200]}" for line in self.bridge_story]
        lines += [f"  consumers: {line[:200]}" for line in self.consumer_story]
        return "\n".join(lines)

    def rows(self) -> list[Row]:
        return [
            Row("churn", f"{self.restaurants:,} restaurants × {self.duration_s:.0f} s: divergences",
                str(len(self.divergences)), f"{len(self.checkpoints)} checkpoints",
                f"{self.fault_divergences} during faults"),
            Row("churn", "ranking seconds off by > 1 s", str(len(self.ranking_off)),
                f"of {self.ranking_checked}", f"largest error {self.ranking_max_error_s:.3f} s"),
            Row("churn", "lost / doubled transitions", f"{len(self.lost_in_history)} / {len(self.doubled)}",
                f"of {self.transitions}", f"{self.redelivered} redelivered"),
            *[Row("churn", f"detection: {k}", f"{v:.3f} s", "", "") for k, v in self.detection.items()],
        ]  # fmt: skip


