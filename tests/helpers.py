"""Small test utilities shared by every test module."""

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from core.status_service import StatusService
from core.task_stop import cancel_and_wait
from core.view_cache import ViewCache

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


async def ready_or_raise(
    task: "asyncio.Task[None]",
    ready: Callable[[], bool],
    name: str,
    timeout: float,
    state: Callable[[], str] = lambda: "",
) -> None:
    """Wait until a worker's task is `ready()`; a task that ended first raises its error, and one that
    never got ready says where it stood (`state`)."""
    try:
        await wait_until(lambda: ready() or task.done(), timeout)
    except AssertionError:
        raise AssertionError(f"{name} never became ready in {timeout} s: {state()}") from None
    if task.done():
        task.result()


async def bridge_converged(bridge: Any, task: "asyncio.Task[None]", timeout: float = 20.0) -> None:
    """Wait for the bridge's first convergence (reading every shard's retained presence)."""
    await ready_or_raise(task, bridge.converged.is_set, "bridge", timeout, lambda: bridge_whereabouts(bridge))


@asynccontextmanager
async def view_copy(service: StatusService) -> AsyncIterator[ViewCache]:
    """The API's copy of the status views' facts (core/view_cache.py), tracking, for the block's length."""
    copy = service.views.cache
    task = asyncio.create_task(copy.run())
    try:
        await ready_or_raise(task, lambda: copy.tracking, "the status view copy", 10.0)
        yield copy
    finally:
        await cancel_and_wait([task])
