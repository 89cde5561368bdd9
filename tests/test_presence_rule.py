"""The (epoch, state) rule of DESIGN.md §3: the pure reference and the Redis script agree, in any order."""

import uuid
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis

from core.messages import DeviceState, Event, EventType
from core.presence_rule import heartbeat_accepted, rank, supersedes
from core.presence_store import PresenceStore
from core.settings import Settings

messages = st.lists(
    st.tuples(st.integers(min_value=0, max_value=5), st.sampled_from(list(DeviceState))), min_size=1, max_size=8
)


def fold(sequence: list[tuple[int, DeviceState]]) -> tuple[int, DeviceState] | None:
    current: tuple[int, DeviceState] | None = None
    for message in sequence:
        if supersedes(message, current):
            current = message
    return current


@given(messages, st.randoms())
def test_final_state_is_the_greatest_whatever_the_order(sequence: list[Any], rnd: Any) -> None:
    shuffled = list(sequence)
    rnd.shuffle(shuffled)
    assert fold(shuffled) == max(sequence, key=lambda m: rank(*m))


@given(st.integers(0, 5), messages)
def test_heartbeats_of_ended_or_older_epochs_are_ignored(epoch: int, sequence: list[Any]) -> None:
    current = fold(sequence)
    assert current is not None
    accepted = heartbeat_accepted(epoch, current)
    assert accepted == (epoch > current[0] or (epoch == current[0] and current[1] is DeviceState.ONLINE))


def event(rid: str) -> Event:
    return Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id="d")


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=messages, rnd=st.randoms())
async def test_redis_script_matches_the_reference(settings: Settings, sequence: list[Any], rnd: Any) -> None:
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    store = PresenceStore(redis, f"{settings.redis_prefix}{uuid.uuid4().hex}:")
    try:
        shuffled = list(sequence)
        rnd.shuffle(shuffled)
        transitions = 0
        connected = False
        for epoch, state in shuffled:  # one message at a time, as separate bridges would deliver them
            [result] = await store.apply_presence([("r", "d", epoch, state, event("r"))])
            transitions += result.code == 2
            if result.code:
                connected = state is DeviceState.ONLINE
        snap = await store.snapshot("r")
        [device] = snap.devices
        assert (device.epoch, device.state) == max(sequence, key=lambda m: rank(*m))
        assert connected == (device.state is DeviceState.ONLINE)
        # Every stored change of connectedness wrote exactly one outbox event.
        assert len(snap.outbox) == transitions
    finally:
        await redis.aclose()
