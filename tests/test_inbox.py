"""bridge.inbox: how long a small batch waits for company, and what ends the wait."""

import asyncio

import pytest

from bridge import inbox as inbox_module
from bridge.inbox import Inbox
from tests.helpers import wait_until


@pytest.fixture
def long_lingers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lengthened so that what is asserted is the order of events, not a few milliseconds.
    monkeypatch.setattr(inbox_module, "LINGER_S", 0.3)
    monkeypatch.setattr(inbox_module, "LINGER_QUIET_S", 30.0)


async def test_heartbeats_alone_wait_for_company_until_shortly_after_an_urgent_message(long_lingers: None) -> None:
    box: Inbox[str] = Inbox()
    box.put("beat-1")
    taking = asyncio.create_task(box.take(100))
    await asyncio.sleep(0.5)
    assert not taking.done(), "a lone heartbeat went out without waiting for others"
    box.put("beat-2")
    await asyncio.sleep(0.2)
    assert not taking.done()
    box.put("birth", urgent=True)  # the wait now ends LINGER_S after it, not at once: a storm of births
    await asyncio.sleep(0.1)  # would otherwise make a batch each
    box.put("beat-3")
    await wait_until(taking.done, 5, message="an urgent message did not end the wait")
    assert taking.result() == ["beat-1", "beat-2", "birth", "beat-3"]


async def test_an_urgent_message_waits_only_the_short_linger(long_lingers: None) -> None:
    box: Inbox[str] = Inbox()
    box.put("will", urgent=True)
    taking = asyncio.create_task(box.take(100))
    await wait_until(taking.done, 5, message="an urgent message waited the heartbeats' linger")
    assert taking.result() == ["will"]
    box.put("beat")  # the urgency went with the batch that took it
    taking = asyncio.create_task(box.take(100))
    await asyncio.sleep(1.0)
    assert not taking.done()
    taking.cancel()


async def test_the_wait_never_outlasts_the_callers_deadline(long_lingers: None) -> None:
    box: Inbox[str] = Inbox()
    box.put("beat")
    # A held will is due in 0.5 s: the batch must not keep the loop from releasing it.
    assert await asyncio.wait_for(box.take(100, wait_s=0.5), 5) == ["beat"]


async def test_a_full_batch_does_not_wait(long_lingers: None) -> None:
    box: Inbox[int] = Inbox()
    for n in range(30):
        box.put(n)
    assert await asyncio.wait_for(box.take(100), 5) == list(range(30))
