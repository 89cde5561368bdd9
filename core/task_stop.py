"""Ending background tasks for sure.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that arrives just as the awaited
operation finishes (fixed in 3.12). A `while True` loop around such a call then runs on after
`task.cancel()`, and a plain `gather` waits for it forever: that was the bridge's occasional slow stop.
"""

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

RECANCEL_EVERY_S = 1.0


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again those that ignored it."""
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY_S)
        for task in pending:
            logger.warning("task %s ignored its cancellation; cancelling it again", task.get_name())
            task.cancel()
    for task in tasks:  # retrieved, so none is reported as "never retrieved"; failures were logged where they happened
        if not task.cancelled():
            task.exception()
