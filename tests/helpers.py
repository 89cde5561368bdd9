"""Small test utilities shared by every test module."""

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

BROKERS = ("mosquitto", "amqtt")  # the brokers that keep the device contract (tests/conftest.py broker_url)


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy, and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def bridge_whereabouts(bridge: Any) -> str:
    """Where a bridge that never converged stood: each link's connection and reconciliation, its inbox."""
    now = time.monotonic()
    links = [{"url": link.url, "connected": link.connected, "mqtt5": link.mqtt5, "reconciling": link.reconciling,
              "subscribed": link.reconcile_subscribed_at is not None,
              "last_retained_s_ago": round(now - link.last_retained_at, 1)}
             for link in getattr(bridge, "links", [])]  # fmt: skip
    inbox = getattr(bridge, "inbox", None)
    return f"links {links}, inbox {len(inbox) if inbox is not None else None}"


async def bridge_converged(bridge: Any, task: "asyncio.Task[None]", timeout: float = 20.0) -> None:
    """Wait for the bridge's first convergence; a bridge task that ended first raises its error."""
    try:
        await wait_until(lambda: bridge.converged.is_set() or task.done(), timeout)
    except AssertionError:
        raise AssertionError(f"bridge never converged in {timeout} s: {bridge_whereabouts(bridge)}") from None
    if task.done():
        task.result()
