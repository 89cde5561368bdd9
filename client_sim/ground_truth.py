"""The ground-truth log: one JSON line per thing a simulated device did, to check the platform against.

Every line has `ts` (wall clock, epoch ms), `event`, `rid`, `did`, `epoch` and event fields:

| event | fields | meaning |
|---|---|---|
| `run_start` / `run_end` | config summary | (no rid/did/epoch) |
| `connect_attempt` | `reason`, `broker` | a CONNECT with a new epoch is on its way |
| `connect_failed` | `error` | the TCP/WebSocket connection could not be opened |
| `connack` | `rc` | the broker answered (0 = accepted) |
| `birth_sent` | | presence online published (QoS 1, retained) |
| `heartbeat` | `run` | a heartbeat; `run: "start"` marks the first of a run of regular heartbeats |
| `heartbeat_last` | `count` | `ts` is the last heartbeat of the run of them that just ended |
| `silent_start` / `silent_end` | | the app stops / resumes heartbeats; the session stays open |
| `graceful_offline` | | presence offline published before DISCONNECT |
| `crash` | | the socket was closed without DISCONNECT: the broker publishes the will |
| `flap` | | the network dropped the connection; the device reconnects with backoff |
| `takeover` | `old_epoch` | a new connection (`epoch`) with the same client id replaces the open one |
| `connection_lost` | `reason` | the connection ended without the device asking |
| `reconnect_backoff` | `delay`, `attempt` | the device waits `delay` seconds before reconnecting |
| `status_received` | `payload` | the retained status the platform published for the restaurant |
| `connack_timeout` / `stopped` | | no CONNACK in time / stopped while still connecting |
| `unexpected_message` | `topic`, `payload` | the broker delivered something other than the own status |
| `unavailability_created` | `uid`, `reason`, `start`, `end` | the API accepted it (times in epoch ms, as stored) |
| `unavailability_cancelled` | `uid`, `cancelled_at` | the API cancelled it at `cancelled_at` (epoch ms) |

A crash or a stop also ends a silence: the app comes back without its hang. By default heartbeats
are logged at the edges of each run of them (first and last), enough for last_seen at any instant;
`truth_heartbeats="all"` logs every one.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from client_sim.epochs import wall_ms
from core.status import Unavailability, UnavailabilityReason

SESSION_END_EVENTS = frozenset({"graceful_offline", "crash", "flap", "connection_lost"})


class TruthLog:
    """Appends events to a JSON-lines file (or nowhere); written only from the loop's thread."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self.events_written = 0

    def open(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", buffering=1 << 16)

    def write(self, event: str, rid: str | None = None, did: str | None = None,
              epoch: int | None = None, ts: int | None = None, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"ts": wall_ms() if ts is None else ts, "event": event, "rid": rid, "did": did, "epoch": epoch}
        record.update(fields)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.events_written += 1

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: Path) -> list[dict[str, Any]]:
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


@dataclass(slots=True)
class _DeviceTruth:
    epoch: int = -1
    ended: bool = True
    last_seen: int = 0
    heartbeating: bool = False


def device_truth(events: Iterable[dict[str, Any]], at_ms: int) -> dict[tuple[str, str], _DeviceTruth]:
    """Replay the log up to `at_ms`: per device, its live epoch, whether that session ended, last_seen."""
    devices: dict[tuple[str, str], _DeviceTruth] = {}
    ordered = sorted((e for e in events if e.get("rid") and e["ts"] <= at_ms), key=lambda e: e["ts"])
    for event in ordered:
        key = (event["rid"], event["did"])
        truth = devices.setdefault(key, _DeviceTruth())
        kind, epoch = event["event"], event.get("epoch")
        if kind == "birth_sent":
            if epoch is not None and epoch > truth.epoch:
                truth.epoch, truth.ended, truth.last_seen, truth.heartbeating = epoch, False, event["ts"], False
            continue
        if kind == "takeover" and event.get("old_epoch") == truth.epoch:
            # The broker closes the old connection as the new CONNECT arrives (and sends its will);
            # the device counts again from the birth of the new epoch.
            truth.ended, truth.heartbeating = True, False
            continue
        if epoch != truth.epoch or truth.ended:
            continue  # an older session, or one already over: the platform ignores it too
        if kind == "heartbeat":
            truth.last_seen = max(truth.last_seen, event["ts"])
            if event.get("run") == "start":
                truth.heartbeating = True
        elif kind == "heartbeat_last":
            truth.last_seen = max(truth.last_seen, event["ts"])
            truth.heartbeating = False
        elif kind == "silent_start":
            truth.heartbeating = False
        elif kind in SESSION_END_EVENTS:
            truth.ended, truth.heartbeating = True, False
    return devices


def unavailabilities_from_log(events: Iterable[dict[str, Any]]) -> dict[str, list[Unavailability]]:
    """Per restaurant, the unavailabilities the API accepted, with their cancel instants."""
    created: dict[str, tuple[str, dict[str, Any]]] = {}
    cancelled: dict[str, int] = {}
    for event in events:
        if event["event"] == "unavailability_created":
            created[event["uid"]] = (event["rid"], event)
        elif event["event"] == "unavailability_cancelled":
            cancelled[event["uid"]] = event["cancelled_at"]
    out: dict[str, list[Unavailability]] = {}
    for uid, (rid, event) in created.items():
        cancel = cancelled.get(uid)
        out.setdefault(rid, []).append(
            Unavailability(
                start=_at(event["start"]),
                end=_at(event["end"]),
                reason=UnavailabilityReason(event["reason"]),
                cancelled_at=_at(cancel) if cancel is not None else None,
            )
        )
    return out


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def expected_connected(events: Iterable[dict[str, Any]], at_ms: int, window_s: float = 120.0) -> set[str]:
    """The restaurants that should count as connected at `at_ms` (DESIGN.md §1 and §3).

    A device counts when the session of its latest birth has not ended (graceful offline, crash,
    flap, lost connection, takeover) and it was heard from (birth or heartbeat) within `window_s`. While a run
    of heartbeats logged in edges mode is going on, the device is heard from every interval, which
    is shorter than the window. Opening hours and unavailabilities are not the simulator's business.
    """
    window_ms = window_s * 1000
    return {
        rid
        for (rid, _did), truth in device_truth(events, at_ms).items()
        if not truth.ended and (truth.heartbeating or at_ms - truth.last_seen <= window_ms)
    }
