"""The (epoch, state) rule of DESIGN.md §3: the pure reference and the Redis script agree, in any order."""

import uuid
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis

from core.messages import DeviceState, Event, EventType
from core.presence_rule import heartbeat_accepted, rank, supersedes
from core.presence_store import PresenceStore, outbox_field
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


async def test_a_heartbeat_after_a_silence_longer_than_the_window_is_a_transition(settings: Settings) -> None:
    """Even before the sweep flags the device stale: the status already read it as disconnected (a bridge
    restarted after the window passed settles it so), and only a transition settles it back."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    store = PresenceStore(redis, f"{settings.redis_prefix}{uuid.uuid4().hex}:")
    window, t = 120_000, 1_700_000_000_000
    try:
        await store.apply_presence([("r", "d", 3, DeviceState.ONLINE, event("r"))], at_ms=t)

        async def types(epoch: int, at: int) -> list[EventType]:
            outcome = await store.heartbeats([("r", "d", epoch)], at_ms=at, window_ms=window)
            return [result.event.type for _rid, result in outcome.transitions if result.event is not None]

        assert await types(3, t + window - 1) == []  # inside the window: nothing changed
        t += window - 1
        assert await types(3, t + window) == [EventType.DEVICE_ONLINE]  # silent for the whole window
        t += window
        assert await types(4, t + 1_000) == []  # a newer epoch of a connected device: still connected
        t += 1_000
        assert await types(5, t + window + 5_000) == [EventType.DEVICE_ONLINE]  # newer epoch after a silence
        # Without a window (the old call), only the stale flag counts.
        outcome = await store.heartbeats([("r", "d", 5)], at_ms=t + 10 * window)
        assert outcome.transitions == []
    finally:
        await redis.aclose()


async def test_a_batch_larger_than_one_index_update_refreshes_every_device_in_the_index(settings: Settings) -> None:
    """heartbeat_batch.lua updates the heartbeat index 1,000 devices a ZADD: every chunk must land, the last
    short one too, and a device twice in a batch is one member."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    store = PresenceStore(redis, f"{settings.redis_prefix}{uuid.uuid4().hex}:")
    t = 1_700_000_000_000
    beats = [(f"r{i}", "d", 1) for i in range(2_345)] + [("r7", "d", 1)]
    try:
        await store.heartbeats(beats, at_ms=t)
        indexed = await store.stale_candidates(t, limit=10_000)
        assert sorted(indexed) == sorted((rid, "d", t) for rid, _, _ in beats[:-1])
        await store.heartbeats(beats, at_ms=t + 5)
        assert await store.stale_candidates(t + 4, limit=10_000) == []  # every member moved on, none left behind
        assert len(await store.stale_candidates(t + 5, limit=10_000)) == 2_345
    finally:
        await redis.aclose()


def test_outbox_fields_sort_in_commit_order_within_a_millisecond() -> None:
    # With RabbitMQ away a device event and the STATUS_CHANGED it caused may be committed in the same
    # millisecond; the flush publishes a restaurant's outbox in field order.
    fields = [outbox_field() for _ in range(2000)]
    assert len({f[2:15] for f in fields}) < len(fields)  # several in one millisecond
    assert sorted(fields) == fields
