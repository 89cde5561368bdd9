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
