"""Faults injected into a churn run (tests/test_churn_runs.py, `python -m bench churn --fault NAME`): each
restarts or stops one of the run's private servers, or kills the bridge, and returns when the platform
is whole again, with its figures; the stretches in which the bridge could not apply what devices did
are recorded as `Blind` for the ground truth."""

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bench.churn_truth import Blind
from bench.harness import BenchError, scrape

if TYPE_CHECKING:
    from bench.churn import ChurnRun

FaultAction = Callable[["ChurnRun"], Awaitable[dict[str, float]]]


@dataclass
class Fault:
    """`action` runs `at_s` into the run and returns when the platform is whole again (figures)."""

    name: str
    at_s: float
    action: FaultAction
    recovery_s: float = 5.0  # checkpoints this long after recovery still count as "during the fault"


async def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


def _logged_at(log: Path, text: str, after: float) -> float | None:
    """The instant of the first line of `log` holding `text` logged after `after` (core.cli's format:
    local time, milliseconds after a comma); None if there is none."""
    for line in log.read_text(errors="replace").splitlines():
        if text in line:
            with contextlib.suppress(ValueError):
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if at >= after:
                    return at
    return None


def _metric(port: int, name: str) -> float | None:
    try:
        return scrape(port).get(name)
    except OSError:
        return None


async def kill_bridge(run: "ChurnRun") -> dict[str, float]:
    bridge = run.platform.apps["bridge"]
    assert bridge.process is not None
    down = time.time()
    os.kill(bridge.process.pid, signal.SIGKILL)
    await asyncio.to_thread(bridge.process.wait, 10)
    await asyncio.sleep(2.0)
    t0, restarted = time.monotonic(), time.time()
    await asyncio.to_thread(bridge.start)
    await asyncio.to_thread(bridge.wait_ready, 60)
    port = run.settings.bridge_metrics_port
    await _wait(lambda: _metric(port, "bridge_converged") == 1, 60, "the bridge to converge")
    # Heard live from its MQTT connect on: that came up to 4 s after its start on a busy machine, and
    # only its log says when (its metrics answer before it connects).
    live_from = _logged_at(bridge.log_file, "bridge.mqtt_link: connected to", after=restarted)
    run.blind.append(Blind(down, time.time(), "lost", live_from=live_from))
    return {"down_s": 2.0, "converged_after_restart_s": round(time.monotonic() - t0, 2)}


async def restart_redis(run: "ChurnRun") -> dict[str, float]:
    redis = run.platform.backends.redis
    down = time.time()
    await asyncio.to_thread(redis.stop)
    t0 = time.monotonic()
    await asyncio.to_thread(redis.start)
    await asyncio.to_thread(redis.wait_ready, 30)
    back = time.time()
    run.feed_lost = True  # the feed's stream lived there
    port = run.settings.bridge_metrics_port
    await _wait(lambda: _metric(port, "bridge_converged") == 0, 10, "the bridge to notice")
    converged = await _wait(lambda: _metric(port, "bridge_converged") == 1, 60, "the bridge to converge")
    run.blind.append(Blind(down, time.time(), "rebuild", rebuild_from=back))
    return {"redis_restart_s": round(time.monotonic() - t0 - converged, 2), "converge_s": round(converged, 2)}


async def restart_rabbitmq(run: "ChurnRun") -> dict[str, float]:
    rabbit = run.platform.backends.rabbitmq
    t0, down = time.monotonic(), time.time()
    await asyncio.to_thread(rabbit.stop, 60)
    await asyncio.to_thread(rabbit.start)
    await asyncio.to_thread(rabbit.wait_ready, 120)
    back = time.monotonic()
    # The bridge retries a held batch with backoff (at most 5 s apart): it has caught up at its first
    # confirmed publish after its last retry.
    port = run.settings.bridge_metrics_port
    retries, published, last_retry, caught_up = None, None, back, 0.0
    while not caught_up or time.monotonic() - last_retry < 6.0:
        if time.monotonic() - back > 60:
            raise BenchError("the bridge did not catch up within 60 s of RabbitMQ's restart")
        now_retries = _metric(port, "bridge_batch_retries_total")
        now_published = _metric(port, "bridge_events_published_total")
        if now_retries != retries:
            retries, published, last_retry, caught_up = now_retries, now_published, time.monotonic(), 0.0
        elif now_published != published:
            published, caught_up = now_published, caught_up or time.time()
        await asyncio.sleep(0.1)
    run.blind.append(Blind(down, caught_up, "late"))
    return {"rabbitmq_down_s": round(back - t0, 2), "caught_up_s": round(caught_up - down, 2)}


async def stop_ferretdb(run: "ChurnRun", seconds: float = 30.0) -> dict[str, float]:
    ferret = run.platform.backends.ferretdb
    await asyncio.to_thread(ferret.stop)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(ferret.start)
    await asyncio.to_thread(ferret.wait_ready, 30)
    return {"ferretdb_down_s": seconds}


async def restart_broker(run: "ChurnRun") -> dict[str, float]:
    broker, bridge = run.platform.backends.mosquitto, run.platform.apps["bridge"]
    down = time.time()
    t0 = time.monotonic()
    await asyncio.to_thread(broker.stop)
    await asyncio.to_thread(broker.start)
    await asyncio.to_thread(broker.wait_ready, 30)
    back = time.monotonic() - t0
    run.broker_outages.append((down - 1.0, time.time() + 1.0))
    # The bridge reconnects with backoff and jitter, up to seconds after the broker is back (1.9 s once,
    # under load): devices that connected before it were read only then, as of then, and their heartbeats
    # in between were lost. Its metrics still said "converged" until it noticed, and only its log says when.
    connected = await _wait_logged(bridge.log_file, "bridge.mqtt_link: connected to", down, "the bridge to reconnect")
    await _wait_logged(bridge.log_file, "converged on retained presence", connected, "the bridge to converge")
    run.blind.append(Blind(down, time.time(), "lost", live_from=connected))
    return {"broker_down_s": round(back, 2), "bridge_back_s": round(connected - down, 2)}


async def _wait_logged(log: Path, text: str, after: float, what: str, timeout: float = 60.0) -> float:
    """When `text` was first logged after `after`, once it has been (`_logged_at`)."""
    found: list[float] = []

    def logged() -> bool:
        at = _logged_at(log, text, after)
        if at is not None:
            found.append(at)
        return at is not None

    await _wait(logged, timeout, what)
    return found[-1]


FAULTS: dict[str, FaultAction] = {
    "kill-bridge": kill_bridge,
    "redis": restart_redis,
    "rabbitmq": restart_rabbitmq,
    "ferretdb": stop_ferretdb,
    "broker": restart_broker,
}
