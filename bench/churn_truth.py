"""The churn run's ground truth: device sessions from client_sim's log, with the platform's documented
delays (a will held `will_grace_s`, a broker outage ending a session or not, the blind stretches of a fault),
built as early and as late as the platform could have known each fact (bench/churn.py explains)."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from client_sim.ground_truth import unavailabilities_from_log
from core.hours import OpeningHours
from core.replay import Session, status_points
from core.status import OfflineReason, RestaurantRules, StatusCore

SESSION_ENDS = {"graceful_offline": False, "crash": True, "flap": True, "connection_lost": True}  # → is a will


@dataclass
class _Open:
    start_ms: int
    beats: list[int] = field(default_factory=list)
    end_ms: int | None = None
    will: bool = False  # the end is a will (a newer birth before it lands cancels it)


@dataclass(frozen=True)
class Blind:
    """A stretch (wall clock s) in which the bridge could not apply what devices did, by the fault's kind.

    `late`: device events were held back and applied somewhere between when they happened and `end`
    (RabbitMQ away: batches retried). `lost`: presence held back the same way, heartbeats lost or late
    (the bridge dead: the broker queues QoS 1 presence for it), except that from `live_from` (the
    restarted bridge's MQTT connect) a heartbeat may also be heard when it is sent: the new bridge
    stamps what it receives while it reconciles, and applies it as of then. `rebuild`: presence held back, heartbeats
    lost, and every session open at the rebuild counts as heard from then (Redis lost: docs/architecture.md,
    Recovery), the rebuild being between `rebuild_from` (Redis answering again) and `end`.
    """

    start: float
    end: float
    kind: str
    rebuild_from: float = 0.0
    live_from: float | None = None


@dataclass
class Truth:
    """Device sessions, unavailabilities and clock rules per restaurant, as the log and the contract say.

    `sessions` is the earliest the platform could have known each fact, `late` the latest (they differ
    only around `Blind` stretches); the platform must agree with both where they agree, and lie between
    them where they do not: those are the seconds it could not know.
    """

    sessions: dict[str, list[Session]]
    late: dict[str, list[Session]]
    unavailabilities: dict[str, list[Any]]
    sensitive: dict[str, list[int]]  # per restaurant, instants (ms) where a detection window begins
    window: timedelta

    def rules(self, rid: str, hours: OpeningHours, tz: str) -> RestaurantRules:
        return RestaurantRules(hours, tz, tuple(self.unavailabilities.get(rid, ())))


def instant(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def build_truth(events: Sequence[dict[str, Any]], window_s: float, will_grace_s: float,
                broker_outages: Sequence[tuple[float, float]] = (), blind: Sequence[Blind] = ()) -> Truth:
    """Sessions per device from the log (every heartbeat logged), with the contract's delays applied.

    Built twice over the `blind` stretches: as early as the platform could have applied what happened
    there (when it happened; heartbeats it lost dropped) and as late (at the stretch's end).
    """
    early, sensitive = _sessions(events, window_s, will_grace_s, broker_outages, blind, late=False)
    late, late_marks = _sessions(events, window_s, will_grace_s, broker_outages, blind, late=True)
    for rid, instants in late_marks.items():
        sensitive.setdefault(rid, []).extend(instants)
    unav = unavailabilities_from_log(events)
    for rid, items in unav.items():
        marks = sensitive.setdefault(rid, [])
        for e in events:
            if e.get("rid") == rid and e["event"] in ("unavailability_created", "unavailability_cancelled"):
                marks.append(int(e["ts"]))
        for u in items:
            marks.extend(int(t.timestamp() * 1000) for t in (u.start, u.effective_end))
    return Truth(early, late, unav, sensitive, timedelta(seconds=window_s))


def _sessions(events: Sequence[dict[str, Any]], window_s: float, will_grace_s: float,
              broker_outages: Sequence[tuple[float, float]], blind: Sequence[Blind],
              late: bool) -> tuple[dict[str, list[Session]], dict[str, list[int]]]:
    grace_ms = int(will_grace_s * 1000)
    outages = [(a * 1000, b * 1000) for a, b in broker_outages]
    blinds = [(int(b.start * 1000), int(b.end * 1000), b) for b in blind]

    def stretch(ms: int) -> Blind | None:
        return next((b for lo, hi, b in blinds if lo <= ms <= hi), None)

    def effective(ms: int) -> int:
        held = stretch(ms)
        return int(held.end * 1000) if held is not None and late else ms

    def beat_at(ms: int) -> int | None:
        held = stretch(ms)
        if held is None:
            return ms
        if late:
            return int(held.end * 1000)  # applied (last_seen = then) when the bridge caught up
        if held.kind == "late" or (held.live_from is not None and ms >= held.live_from * 1000):
            return ms  # early: applied as of when it was sent
        return None  # early: a lost heartbeat never counted

    per_device: dict[tuple[str, str], list[_Open]] = {}
    epochs: dict[tuple[str, str], int] = {}
    sensitive: dict[str, list[int]] = {}
    ordered = sorted((e for e in events if e.get("rid") and e.get("did")), key=lambda e: e["ts"])
    for event in ordered:
        key = (event["rid"], event["did"])
        kind, ts, epoch = event["event"], int(event["ts"]), event.get("epoch")
        sessions = per_device.setdefault(key, [])
        current = sessions[-1] if sessions else None
        live = current is not None and (current.end_ms is None or current.will)
        if kind == "birth_sent":
            if epoch is None or epoch <= epochs.get(key, -1):
                continue
            epochs[key] = epoch
            if current is not None and (current.end_ms is None or (current.will and current.end_ms > ts)):
                current.end_ms, current.will = effective(ts), False  # superseded (a takeover, or a will not landed)
            sessions.append(_Open(effective(ts)))
            sensitive.setdefault(key[0], []).append(ts)
        elif epoch != epochs.get(key) or current is None or not live:
            continue
        elif kind == "heartbeat" or kind == "heartbeat_last":
            if current.end_ms is None:
                previous = current.beats[-1] if current.beats else current.start_ms
                if ts - previous >= window_s * 1000:
                    sensitive.setdefault(key[0], []).append(ts)  # a stale session revived
                at = beat_at(ts)
                if at is not None and (not current.beats or current.beats[-1] < at):
                    current.beats.append(at)
        elif kind == "takeover":
            if current.end_ms is None:
                current.end_ms, current.will = effective(ts + grace_ms), True  # unless the new birth comes first
                sensitive.setdefault(key[0], []).append(ts)
        elif kind in SESSION_ENDS and current.end_ms is None:
            if kind == "connection_lost" and any(a <= ts <= b for a, b in outages) and late:
                # The broker went away. Its will reaches the platform only when the broker publishes it
                # while shutting down and the bridge's own connection outlives the device's for those
                # few milliseconds (a run under load had one land): the early truth has it, the late not.
                continue
            is_will = SESSION_ENDS[kind]
            current.end_ms, current.will = (effective(ts + grace_ms), True) if is_will else (effective(ts), False)
            sensitive.setdefault(key[0], []).append(ts)
    rebuilds = [int((b.end if late else b.rebuild_from) * 1000) for b in blind if b.kind == "rebuild"]
    out: dict[str, list[Session]] = {}
    for (rid, did), sessions in per_device.items():
        # A session begun and ended inside one blind stretch never showed (late): the next one starts there too.
        # Not strict: a device with no session at all has one "next" (None) and nothing to pair it with.
        sessions = [s for s, nxt in zip(sessions, [*sessions[1:], None], strict=False)
                    if nxt is None or nxt.start_ms > s.start_ms]  # fmt: skip
        for s in sessions:
            revived = {r for r in rebuilds if s.start_ms < r and (s.end_ms is None or r < s.end_ms)}
            beats = sorted(set(s.beats) | revived)
            if s.end_ms is not None:
                beats = [b for b in beats if b <= s.end_ms]
            out.setdefault(rid, []).append(Session(did, instant(s.start_ms), instant(s.end_ms) if s.end_ms else None,
                                                   tuple(instant(b) for b in beats)))
            marks = sensitive.setdefault(rid, [])
            if s.end_ms is not None:
                marks.append(s.end_ms)
            # Where the heartbeats stop for a window, the session goes stale: a detection window too.
            seen = [s.start_ms, *beats]
            for a, b in zip(seen, [*seen[1:], None], strict=True):
                stale = a + int(window_s * 1000)
                if (b is None or b > stale) and (s.end_ms is None or stale < s.end_ms):
                    marks.append(stale)
    return out, sensitive


def core_text(core: StatusCore | dict[str, Any]) -> str:
    if isinstance(core, dict):
        online, reason, detail = core["online"], core.get("reason"), core.get("detail")
    else:
        online, reason, detail = core.online, core.reason, core.detail
    return "online" if online else f"{reason}{'/' + str(detail) if detail else ''}"


def disconnected_seconds(truth: Truth, rules: RestaurantRules, rid: str, start: datetime, end: datetime,
                         late: bool = False) -> float:
    """DISCONNECTED seconds in [start, end) by the status function over the log's sessions."""
    sessions = (truth.late if late else truth.sessions).get(rid, [])
    points = status_points(rid, rules, sessions, start, end, truth.window)
    total = 0.0
    for (at, status), nxt in zip(points, [*points[1:], None], strict=True):
        until = end if nxt is None else nxt[0]
        if status.reason is OfflineReason.DISCONNECTED:
            total += (until - at).total_seconds()
    return total


