"""The bridge end to end on real Mosquitto, Redis, RabbitMQ and FerretDB."""

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest
import redis.exceptions
from redis.asyncio import Redis

from bridge.mqtt_link import Inbound
from bridge.worker import Bridge
from core.db import open_mongo
from core.horizons import Horizons
from core.ids import status_topic
from core.messages import DeviceState
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status import Unavailability, UnavailabilityReason
from core.status_codec import profile_json
from core.status_service import StatusService
from tests.devices import (
    ALWAYS_CLOSED,
    ALWAYS_OPEN,
    Device,
    EventTap,
    StatusWatcher,
    make_restaurant,
    outbox_empty,
    settle_time,
)
from tests.helpers import bridge_converged, wait_until
from tests.tcp_cut import CuttableRelay

# Mosquitto outlives a test and keeps retained presence: ids unique to this run keep tests apart.
RID = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in
       ("r-life", "r-two", "r-stale", "r-closed", "r-bad", "r-keep", "r-gone", "r-take", "r-away")}


ONE_BROKER = pytest.mark.parametrize("env", ["mosquitto"], indirect=True)


@asynccontextmanager
async def running_bridge(settings: Settings, instance: str | None = None) -> AsyncIterator[Bridge]:
    bridge = Bridge(settings, instance or uuid.uuid4().hex[:8])
    task = asyncio.create_task(bridge.run())
    try:
        await bridge_converged(bridge, task)
        yield bridge
    finally:
        bridge.request_stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture(params=["mosquitto", "amqtt"])
async def env(request: pytest.FixtureRequest, settings: Settings, stack: Any) -> AsyncIterator[dict[str, Any]]:
    url = stack.mosquitto_url if request.param == "mosquitto" else stack.amqtt_url
    # Each test's bridges get their own shared-subscription group: an earlier test's bridge session may
    # still be alive on the session-wide Mosquitto and would otherwise take a share of the messages.
    fast = settings.model_copy(
        update={
            "bridge_metrics_port": 0,
            "stale_after_s": 2.0,
            "sweep_interval_s": 0.2,
            # The broker sends the retained state in one burst on loopback: 1 s of quiet per bridge
            # start was ~45 s of make test.
            "bridge_retained_quiet_s": 0.3,
            "mqtt_shared_group": f"g{uuid.uuid4().hex[:8]}",
            "mqtt_brokers": [url],
        }
    )
    mongo = await open_mongo(fast)
    redis = Redis.from_url(fast.redis_url, decode_responses=True)
    service = StatusService(PresenceStore(redis, fast.redis_prefix), timedelta(seconds=2))
    async with EventTap(fast) as tap:
        yield {"settings": fast, "tap": tap, "service": service, "url": url}
    await redis.aclose()
    await mongo.close()


def status_of(service: StatusService, rid: str) -> Callable[[], Any]:
    async def read() -> Any:
        statuses, _ = await service.current([rid])
        return statuses[0]

    return read


async def test_birth_will_graceful_and_one_status_change_each(env: dict[str, Any], stack: Any) -> None:
    settings, tap, service = env["settings"], env["tap"], env["service"]
    secret = await make_restaurant(settings, stack, RID["r-life"])
    async with running_bridge(settings):
        device = Device(env["url"], RID["r-life"], secret)
        await asyncio.to_thread(device.connect, 1)
        await tap.wait_for(RID["r-life"], "DEVICE_ONLINE")
        changed = await tap.wait_for(RID["r-life"], "STATUS_CHANGED")
        assert changed[0]["data"]["online"] is True
        assert (await status_of(service, RID["r-life"])()).online
        # The device hears its own derived status on its retained status topic.
        await wait_until(lambda: any(s["online"] for s in device.statuses), 10, message="retained status")
        assert device.statuses[-1]["restaurant_id"] == RID["r-life"]

        await asyncio.to_thread(device.crash)
        offline = await tap.wait_for(RID["r-life"], "DEVICE_OFFLINE", timeout=20)
        assert offline[0]["data"]["cause"] == "will"
        changed = await tap.wait_for(RID["r-life"], "STATUS_CHANGED", 2)
        assert changed[1]["data"]["reason"] == "DISCONNECTED"

        await asyncio.to_thread(device.connect, 2)
        await tap.wait_for(RID["r-life"], "STATUS_CHANGED", 3)
        await asyncio.to_thread(device.graceful)
        offline = await tap.wait_for(RID["r-life"], "DEVICE_OFFLINE", 2)
        assert offline[1]["data"]["cause"] == "graceful"
        await tap.wait_for(RID["r-life"], "STATUS_CHANGED", 4)
        await settle_time()
        for queue in (settings.dashboard_queue, settings.aggregator_queue):
            kinds = [e["data"]["online"] for e in tap.of(RID["r-life"], "STATUS_CHANGED", queue)]
            assert kinds == [True, False, True, False], queue


async def test_rabbitmq_away_holds_events_in_redis_and_loses_none(env: dict[str, Any], stack: Any) -> None:
    # Only this bridge loses RabbitMQ (through a relay the test cuts): it goes on applying presence,
    # the devices get their status, and once RabbitMQ is back every event arrives once, in order.
    settings, tap, service = env["settings"], env["tap"], env["service"]
    amqp = urlsplit(settings.amqp_url)
    relay = CuttableRelay(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await relay.open()
    # The device sends no heartbeats: with the 2 s of `env`, a slow reconnection to RabbitMQ let the sweep
    # flag it stale before the events were counted (seen with the files run in one process).
    cut = settings.model_copy(update={"amqp_url": settings.amqp_url.replace(f":{amqp.port}/", f":{relay.port}/"),
                                      "stale_after_s": 60.0})  # fmt: skip
    rid = RID["r-away"]
    secret = await make_restaurant(cut, stack, rid)
    try:
        async with running_bridge(cut) as bridge:
            device = Device(env["url"], rid, secret)
            await asyncio.to_thread(device.connect, 1)
            await tap.wait_for(rid, "STATUS_CHANGED")
            # The cut comes once the bridge holds RabbitMQ's confirms of the birth's events, not merely once
            # the tap has them: under load the tap was first, the cut lost the confirm, and the birth's
            # STATUS_CHANGED waited in Redis to be sent again (a duplicate the consumers drop, and this test
            # counts) and put the restaurant in the backlog before the graceful stop was applied (make test,
            # 2026-11-27).
            await wait_until(lambda: outbox_empty(service.store, rid), 10, message="the birth's events never confirmed")
            await relay.cut()
            # Bad input meanwhile waits in Redis too, and does not hold up the batch it came in.
            await asyncio.to_thread(device.publish_raw, f"restaurants/{rid}/devices/tablet/presence", b"not json")
            await asyncio.to_thread(device.graceful)
            await wait_until(lambda: rid in bridge.outbox.backlog, 10, message="events not held")
            assert not (await status_of(service, rid)()).online  # Redis moved on without RabbitMQ
            heard = len(device.statuses)
            await asyncio.to_thread(device.connect, 2)
            # The broker kept the DISCONNECTED status the bridge published without RabbitMQ.
            await wait_until(lambda: any(not s["online"] for s in device.statuses[heard:]), 10,
                             message="no retained status")  # fmt: skip

            async def online() -> bool:
                return bool((await status_of(service, rid)()).online)

            await wait_until(online, 10, message="second birth not applied")
            assert len(tap.of(rid, "STATUS_CHANGED", settings.dashboard_queue)) == 1
            await relay.open()
            await tap.wait_for(rid, "STATUS_CHANGED", 3, timeout=30)
            await wait_until(lambda: not bridge.outbox.backlog and not bridge.dead_letters.waiting, 10,
                             message="still held")  # fmt: skip
            connection = await aio_pika.connect(settings.amqp_url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.get_queue(settings.amqp_name(settings.mqtt_dead_letter_queue))
                ours: list[bytes] = []  # retained presence of earlier tests' restaurants is dead-lettered too

                async def letter_for_us() -> bool:
                    letter = await queue.get(no_ack=True, fail=False)
                    if letter is not None and rid in str(letter.headers["topic"]):
                        ours.append(letter.body)
                    return bool(ours)

                await wait_until(letter_for_us, 10, message="no dead letter")
                assert ours == [b"not json"]
            await settle_time(0.5)
            for queue in (settings.dashboard_queue, settings.aggregator_queue):
                events = tap.of(rid, queue=queue)
                assert [e["type"] for e in events] == ["DEVICE_ONLINE", "STATUS_CHANGED", "DEVICE_OFFLINE",
                                                       "STATUS_CHANGED", "DEVICE_ONLINE", "STATUS_CHANGED"], queue
                assert [e["data"]["online"] for e in events if e["type"] == "STATUS_CHANGED"] == [True, False, True]
            await asyncio.to_thread(device.stop)
    finally:
        await relay.close()


async def test_two_devices_restaurant_online_while_either_is(env: dict[str, Any], stack: Any) -> None:
    settings, tap, service = env["settings"], env["tap"], env["service"]
    secret = await make_restaurant(settings, stack, RID["r-two"])
    async with running_bridge(settings):
        tablet = Device(env["url"], RID["r-two"], secret, "tablet")
        pos = Device(env["url"], RID["r-two"], secret, "pos")
        await asyncio.to_thread(tablet.connect, 1)
        await asyncio.to_thread(pos.connect, 1)
        await tap.wait_for(RID["r-two"], "DEVICE_ONLINE", 2)
        await asyncio.to_thread(tablet.graceful)
        await tap.wait_for(RID["r-two"], "DEVICE_OFFLINE")
        status = await status_of(service, RID["r-two"])()
        assert status.online and status.devices_connected == 1
        await asyncio.to_thread(pos.graceful)
        await tap.wait_for(RID["r-two"], "STATUS_CHANGED", 2)
        assert [e["data"]["online"] for e in tap.of(RID["r-two"], "STATUS_CHANGED")] == [True, False]


async def test_stale_then_revived_by_heartbeat(env: dict[str, Any], stack: Any) -> None:
    settings, tap, service = env["settings"], env["tap"], env["service"]
    secret = await make_restaurant(settings, stack, RID["r-stale"])
    async with running_bridge(settings):
        device = Device(env["url"], RID["r-stale"], secret)
        await asyncio.to_thread(device.connect, 7)
        await tap.wait_for(RID["r-stale"], "STATUS_CHANGED")
        offline = await tap.wait_for(RID["r-stale"], "DEVICE_OFFLINE", timeout=10)
        assert offline[0]["data"]["cause"] == "stale"
        assert (await status_of(service, RID["r-stale"])()).reason == "DISCONNECTED"
        await asyncio.to_thread(device.heartbeat, 6)  # an older epoch proves nothing
        await settle_time(0.5)
        assert len(tap.of(RID["r-stale"], "DEVICE_ONLINE")) == 1
        await asyncio.to_thread(device.heartbeat)
        await tap.wait_for(RID["r-stale"], "DEVICE_ONLINE", 2)
        await tap.wait_for(RID["r-stale"], "STATUS_CHANGED", 3)
        assert (await status_of(service, RID["r-stale"])()).online
        await asyncio.to_thread(device.stop)


@ONE_BROKER
async def test_a_device_is_not_swept_while_another_bridge_of_the_group_runs_behind(
    env: dict[str, Any], stack: Any
) -> None:
    # A shared subscription hands a device's beats to any bridge of the group: while one runs behind, it may
    # hold them unread as another finds the device silent. What a bridge behind by 60 s publishes is its
    # horizon (core/horizons.py); the sweep must not judge silence past it.
    settings, tap = env["settings"], env["tap"]
    rid = RID["r-stale"] + "-g"
    secret = await make_restaurant(settings, stack, rid)
    horizons = Horizons(Redis.from_url(settings.redis_url, decode_responses=True), settings.redis_prefix)
    other = f"behind-{uuid.uuid4().hex[:6]}"

    async def run_behind() -> None:
        while True:
            now = int(time.time() * 1000)
            await horizons.publish(other, now - 60_000, now)
            await asyncio.sleep(0.5)

    behind = asyncio.create_task(run_behind())
    try:
        async with running_bridge(settings):
            device = Device(env["url"], rid, secret)
            await asyncio.to_thread(device.connect, 7)
            await tap.wait_for(rid, "STATUS_CHANGED")
            await settle_time(settings.stale_after_s + 2.0)  # silent for twice the window, sweeps every 0.2 s
            # Its next beat comes more than a window after the last applied one: no gap of its own either.
            await asyncio.to_thread(device.heartbeat)
            await settle_time(0.5)
            assert tap.of(rid, "DEVICE_OFFLINE") == []
            assert len(tap.of(rid, "DEVICE_ONLINE")) == 1
            behind.cancel()
            await horizons.withdraw(other)  # the other bridge stopped: its horizon holds nobody back
            offline = await tap.wait_for(rid, "DEVICE_OFFLINE", timeout=10)
            assert offline[0]["data"]["cause"] == "stale"
            await asyncio.to_thread(device.stop)
    finally:
        behind.cancel()
        await horizons.withdraw(other)
        await horizons.redis.aclose()


async def test_closed_restaurant_is_closed_even_when_connected(env: dict[str, Any], stack: Any) -> None:
    settings, tap, service = env["settings"], env["tap"], env["service"]
    secret = await make_restaurant(settings, stack, RID["r-closed"], hours=ALWAYS_CLOSED)
    async with running_bridge(settings):
        device = Device(env["url"], RID["r-closed"], secret)
        await asyncio.to_thread(device.connect, 1)
        await tap.wait_for(RID["r-closed"], "DEVICE_ONLINE")
        changed = await tap.wait_for(RID["r-closed"], "STATUS_CHANGED")
        assert changed[0]["data"]["reason"] == "CLOSED"
        status = await status_of(service, RID["r-closed"])()
        assert status.reason == "CLOSED" and status.devices_connected == 1
        await asyncio.to_thread(device.crash)
        await tap.wait_for(RID["r-closed"], "DEVICE_OFFLINE", timeout=20)
        await settle_time()
        assert len(tap.of(RID["r-closed"], "STATUS_CHANGED")) == 1  # still CLOSED: not a transition


async def test_malformed_input_is_dead_lettered_and_the_next_message_counts(env: dict[str, Any], stack: Any) -> None:
    settings, tap = env["settings"], env["tap"]
    secret = await make_restaurant(settings, stack, RID["r-bad"])
    async with running_bridge(settings) as bridge:
        device = Device(env["url"], RID["r-bad"], secret)
        await asyncio.to_thread(device.connect, 1, False)
        bad = [b"not json", b'{"state": "dancing", "epoch": 1, "ts": 0}', b'{"state": "online"}', b"x" * 5000]
        for payload in bad:
            await asyncio.to_thread(device.publish_raw, f"restaurants/{RID['r-bad']}/devices/tablet/presence", payload)
        await asyncio.to_thread(device.publish_raw, f"restaurants/{RID['r-bad']}/devices/tablet/heartbeat", b"[]", 0)
        await asyncio.to_thread(device.presence, "online")
        await tap.wait_for(RID["r-bad"], "DEVICE_ONLINE")
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(settings.amqp_name(settings.mqtt_dead_letter_queue))
            reasons: list[Any] = []

            async def ours() -> bool:
                message = await queue.get(no_ack=True, fail=False)
                if message is not None and RID["r-bad"] in str(message.headers["topic"]):
                    reasons.append(message.headers["reason"])
                return len(reasons) == len(bad) + 1

            await wait_until(ours, 20, message="dead letters")
            assert sorted(reasons) == sorted(
                ["bad_json", "bad_presence", "bad_presence", "oversized_payload", "bad_heartbeat"]
            )
        async with httpx.AsyncClient() as http:
            scraped = (await http.get(f"http://127.0.0.1:{bridge.metrics_port}/metrics")).text
        assert 'bridge_invalid_messages_total{reason="bad_json"} 1.0' in scraped
        assert "bridge_batch_seconds_bucket" in scraped
        await asyncio.to_thread(device.stop)


async def test_bridge_restart_reconciles_from_retained_presence(env: dict[str, Any], stack: Any) -> None:
    settings, tap, service = env["settings"], env["tap"], env["service"]
    secrets = {rid: await make_restaurant(settings, stack, rid) for rid in (RID["r-keep"], RID["r-gone"])}
    devices = {rid: Device(env["url"], rid, secret) for rid, secret in secrets.items()}
    for device in devices.values():
        await asyncio.to_thread(device.connect, 3)
    # No bridge ran while the devices came and one went: only the retained presence tells.
    await asyncio.to_thread(devices[RID["r-gone"]].graceful)
    async with running_bridge(settings):
        assert (await status_of(service, RID["r-keep"])()).online
        assert (await status_of(service, RID["r-gone"])()).reason == "DISCONNECTED"
        changed = await tap.wait_for(RID["r-keep"], "STATUS_CHANGED")
        assert changed[0]["data"]["online"] is True
    await asyncio.to_thread(devices[RID["r-keep"]].stop)


TAKEOVERS = 400  # one after another, each new session kicking the last (was 1,000: 24 s on amqtt)


async def test_takeover_never_shows_a_false_offline(env: dict[str, Any], stack: Any) -> None:
    settings, tap, service = env["settings"], env["tap"], env["service"]
    secret = await make_restaurant(settings, stack, RID["r-take"])
    async with running_bridge(settings):
        old = Device(env["url"], RID["r-take"], secret)
        await asyncio.to_thread(old.connect, 1)
        await tap.wait_for(RID["r-take"], "STATUS_CHANGED")
        for epoch in range(2, TAKEOVERS + 2):
            new = Device(env["url"], RID["r-take"], secret)
            await asyncio.to_thread(new.connect, epoch)  # same client id: the broker kicks `old`
            await asyncio.to_thread(old.abandon)
            old = new
        await settle_time(1.0)
        assert (await status_of(service, RID["r-take"])()).online
        assert len(tap.of(RID["r-take"], "STATUS_CHANGED")) == 1
        await asyncio.to_thread(old.stop)




@asynccontextmanager
async def bridge_with_online_device(
    env: dict[str, Any], stack: Any, name: str
) -> AsyncIterator[tuple[Bridge, Device, str]]:
    """A bridge, and a new restaurant `name-…` whose device is online (its STATUS_CHANGED heard)."""
    settings, service, tap = env["settings"], env["service"], env["tap"]
    rid = f"{name}-{uuid.uuid4().hex[:6]}"
    secret = await make_restaurant(settings, stack, rid)
    async with running_bridge(settings) as bridge:
        device = Device(env["url"], rid, secret)
        await asyncio.to_thread(device.connect, 4)
        await wait_until(lambda: _online(service, rid), 10, message="online")
        await tap.wait_for(rid, "STATUS_CHANGED")
        yield bridge, device, rid


async def test_redis_restarted_empty_is_rebuilt_from_retained_presence(env: dict[str, Any], stack: Any) -> None:
    settings, service, tap = env["settings"], env["service"], env["tap"]
    async with bridge_with_online_device(env, stack, "r-lost") as (bridge, device, rid):
        redis = Redis.from_url(settings.redis_url)
        async for key in redis.scan_iter(match=f"{settings.redis_prefix}*"):
            await redis.delete(key)  # this test's whole namespace: Redis as if restarted empty
        await redis.aclose()
        await wait_until(lambda: not bridge.converged.is_set(), 10, message="loss never noticed")
        await wait_until(bridge.converged.is_set, 20, message="never reconverged")
        await wait_until(lambda: _online(service, rid), 10, message="online after the rebuild")
        assert bridge.metrics.converged._value.get() == 1
        await settle_time(0.5)
        # The last status came back from the broker's retained copy: nothing changed, nothing announced.
        assert [e["data"]["online"] for e in tap.of(rid, "STATUS_CHANGED")] == [True]
        await asyncio.to_thread(device.stop)


@ONE_BROKER  # Redis and the settle, not the broker
async def test_redis_emptied_between_the_check_and_the_commit_announces_nothing_again(
    env: dict[str, Any], stack: Any
) -> None:
    # The bridge checks the state marker before a batch, but Redis can restart empty between that check
    # and the batch's writes: its client reconnects by itself, so nothing fails. A heartbeat applied to
    # the empty Redis made the device connected "again", and the bridge announced its restaurant online a
    # second time (the Redis fault run's intermittent double). The commit's guard refuses it instead.
    settings, service, tap = env["settings"], env["service"], env["tap"]
    async with bridge_with_online_device(env, stack, "r-gap") as (bridge, device, rid):
        heartbeats = bridge.store.heartbeats

        async def after_a_restart(*args: Any, **kwargs: Any) -> Any:
            bridge.store.heartbeats = heartbeats  # type: ignore[method-assign]
            keys = [key async for key in bridge.store.redis.scan_iter(match=f"{settings.redis_prefix}*")]
            await bridge.store.redis.delete(*keys)  # the batch's check passed; now Redis is empty
            return await heartbeats(*args, **kwargs)

        bridge.store.heartbeats = after_a_restart  # type: ignore[method-assign]

        async def beating() -> None:  # the device stays alive throughout (the window is 2 s)
            while True:
                await asyncio.to_thread(device.heartbeat)
                await asyncio.sleep(0.5)

        beats = asyncio.create_task(beating())
        try:
            await tap.wait_for(rid, "DEVICE_ONLINE", 2)  # a heartbeat did reach the empty Redis
            await wait_until(lambda: not bridge.converged.is_set(), 10, message="loss never noticed")
            await wait_until(bridge.converged.is_set, 20, message="never reconverged")
            await wait_until(lambda: _online(service, rid), 10, message="online after the rebuild")
            await settle_time(1.0)
        finally:
            beats.cancel()
        assert [e["data"]["online"] for e in tap.of(rid, "STATUS_CHANGED")] == [True]
        await asyncio.to_thread(device.stop)


@ONE_BROKER  # Redis and the settle, not the broker
async def test_a_stop_applied_after_a_boundary_it_preceded_keeps_its_stretch(env: dict[str, Any], stack: Any) -> None:
    # Seconds behind its devices (the full churn run's final stop), the bridge applied a graceful stop
    # received before an unavailability's start only after the start, and settled by the wall clock it
    # went straight to UNAVAILABLE: the DISCONNECTED stretch before the start never reached the history.
    # It now settles a batch as of the batch's receipt.
    tap = env["tap"]
    async with bridge_with_online_device(env, stack, "r-late") as (bridge, device, rid):
        start = datetime.fromtimestamp(round(time.time() + 1.0, 3), UTC)
        holiday = Unavailability(start=start, end=start + timedelta(hours=1), reason=UnavailabilityReason.HOLIDAY)
        await bridge.store.set_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN, [holiday])})
        apply_presence = bridge.store.apply_presence

        async def behind(*args: Any, **kwargs: Any) -> Any:  # a backlog: applied after the start
            await asyncio.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()) + 0.5)
            return await apply_presence(*args, **kwargs)

        bridge.store.apply_presence = behind  # type: ignore[method-assign]
        await asyncio.to_thread(device.graceful)
        assert datetime.now(UTC) < start, "the machine was too slow for this test's 1 s"
        changed = await tap.wait_for(rid, "STATUS_CHANGED", 2, timeout=10)
        assert changed[1]["data"]["reason"] == "DISCONNECTED"
        assert datetime.fromisoformat(changed[1]["data"]["since"]) < start


@ONE_BROKER
async def test_one_batch_settles_each_restaurant_as_of_its_own_message(env: dict[str, Any], stack: Any) -> None:
    # The full churn run's final stop: one batch held a graceful stop received 1.6 s before an
    # unavailability's start and others received after it. Settled as of the batch's newest receipt,
    # that restaurant went straight to UNAVAILABLE and its DISCONNECTED stretch was lost.
    settings, tap = env["settings"], env["tap"]
    async with bridge_with_online_device(env, stack, "r-early") as (bridge, early_device, early):
        late = f"r-late-{uuid.uuid4().hex[:6]}"
        late_device = Device(env["url"], late, await make_restaurant(settings, stack, late))
        await asyncio.to_thread(late_device.connect, 4)
        await tap.wait_for(late, "STATUS_CHANGED")
        start = datetime.fromtimestamp(round(time.time() + 1.0, 3), UTC)
        holiday = Unavailability(start=start, end=start + timedelta(hours=1), reason=UnavailabilityReason.HOLIDAY)
        profile = profile_json("A", "UTC", ALWAYS_OPEN, [holiday])
        await bridge.store.set_profiles({early: profile, late: profile})
        link = bridge.links[0]

        def stop(rid: str, device: Device) -> Any:  # a graceful stop as the link hands it over, received now
            payload = json.dumps({"state": "offline", "epoch": device.epoch}).encode()
            inbound = Inbound(link, f"restaurants/{rid}/devices/{device.did}/presence", payload, 1, False, 0,
                              time.monotonic())  # fmt: skip
            return (inbound, rid, device.did, device.epoch, DeviceState.OFFLINE, "graceful")

        try:
            received_early = stop(early, early_device)
            assert datetime.now(UTC) < start, "the machine was too slow for this test's 1 s"
            await settle_time((start - datetime.now(UTC)).total_seconds() + 0.3)
            await bridge._apply_presence([received_early, stop(late, late_device)])  # one batch, behind
            [_, early_changed] = await tap.wait_for(early, "STATUS_CHANGED", 2, timeout=10)
            [_, late_changed] = await tap.wait_for(late, "STATUS_CHANGED", 2, timeout=10)
        finally:  # their MQTT sessions (and paho's threads) must not outlive the test
            for device in (early_device, late_device):
                await asyncio.to_thread(device.stop)
        assert early_changed["data"]["reason"] == "DISCONNECTED"
        assert datetime.fromisoformat(early_changed["data"]["since"]) < start
        assert (late_changed["data"]["reason"], datetime.fromisoformat(late_changed["data"]["since"])) == (
            "UNAVAILABLE", start
        )  # fmt: skip


def _through(url: str, relay: CuttableRelay) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.port}", f":{relay.port}", 1)


@ONE_BROKER  # Redis and RabbitMQ, not the broker
async def test_sigterm_while_redis_and_rabbitmq_are_away_exits_and_loses_nothing(
    env: dict[str, Any], stack: Any
) -> None:
    # A bridge asked to stop while both were away retried its drained batch without end and needed
    # SIGKILL. It now gives up after `bridge_stop_give_up_s`, leaves the batch unacknowledged in its
    # MQTT session, and exits; the next bridge of that session applies it.
    settings, tap = env["settings"], env["tap"]
    redis_at, amqp_at = urlsplit(settings.redis_url), urlsplit(settings.amqp_url)
    relays = [CuttableRelay(redis_at.hostname or "127.0.0.1", redis_at.port or 6379),
              CuttableRelay(amqp_at.hostname or "127.0.0.1", amqp_at.port or 5672)]  # fmt: skip
    for relay in relays:
        await relay.open()
    cut = settings.model_copy(update={"redis_url": _through(settings.redis_url, relays[0]),
                                      "amqp_url": _through(settings.amqp_url, relays[1]),
                                      "bridge_stop_give_up_s": 1.0, "stale_after_s": 60.0})  # fmt: skip
    rid, instance = f"r-term-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:8]
    secret = await make_restaurant(cut, stack, rid)
    try:
        bridge = Bridge(cut, instance)
        task = asyncio.create_task(bridge.run())
        await bridge_converged(bridge, task)
        device = Device(env["url"], rid, secret)
        await asyncio.to_thread(device.connect, 1)
        await tap.wait_for(rid, "STATUS_CHANGED")
        # Its confirm too: a cut that dropped it left the event in the outbox, published again by the next
        # bridge (same event_id), and the tap read that copy as the second STATUS_CHANGED (fresh45).
        await wait_until(lambda: outbox_empty(env["service"].store, rid), 10, message="events never confirmed")
        for relay in relays:
            await relay.cut()
        await asyncio.to_thread(device.graceful)
        await wait_until(lambda: (bridge.metrics.registry.get_sample_value("bridge_batch_retries_total") or 0) > 0,
                         10, message="the stop never met the outage")  # fmt: skip
        bridge.request_stop()
        await asyncio.wait_for(task, 20)  # it used to run on until killed
        for relay in relays:
            await relay.open()
        async with running_bridge(cut, instance):  # the same session
            [offline] = await tap.wait_for(rid, "DEVICE_OFFLINE", timeout=20)
            changed = await tap.wait_for(rid, "STATUS_CHANGED", 2, timeout=20)
        assert offline["data"]["cause"] == "graceful"
        assert changed[1]["data"]["reason"] == "DISCONNECTED"
    finally:
        for relay in relays:
            await relay.close()


async def _online(service: StatusService, rid: str) -> bool:
    statuses, _ = await service.current([rid])
    return bool(statuses and statuses[0].online)


def settings_env(settings: Settings) -> dict[str, str]:
    """The PRESENCE_* environment that makes a child process see these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    for name, value in settings.model_dump(mode="json").items():
        env[f"PRESENCE_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


async def test_python_m_bridge_converges_and_drains_on_sigterm(settings: Settings, stack: Any) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "--instance", f"sigterm-{uuid.uuid4().hex[:6]}",
        env=settings_env(settings.model_copy(update={"bridge_metrics_port": 0})),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while not any(text in line for line in lines):
            line = await process.stderr.readline()  # type: ignore[union-attr]
            assert line, f"bridge exited before logging {text!r}: {lines}"
            lines.append(line.decode())

    try:
        await asyncio.wait_for(read_until("converged on retained presence"), 30)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(read_until("stopped"), 20)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_an_older_status_acknowledged_after_the_committed_one_is_followed_by_it(env: dict[str, Any]) -> None:
    # The scheduler (or another bridge) commits a newer status and its retained copy reaches the broker
    # before this bridge's older one: the bridge, acknowledged for a status that is no longer the
    # committed one, publishes the committed one again (tests/test_scheduler.py has the scheduler's side).
    settings, store = env["settings"], env["service"].store
    rid = f"r-race-{uuid.uuid4().hex[:8]}"
    older = {"restaurant_id": rid, "online": False, "reason": "DISCONNECTED"}
    newer = {"restaurant_id": rid, "online": False, "reason": "UNAVAILABLE"}
    await store.redis.hset(store.key(rid), "s", json.dumps(newer))
    async with running_bridge(settings) as bridge:
        with StatusWatcher(env["url"], settings, rid) as watcher:
            sent = watcher.client.publish(status_topic(rid), json.dumps(newer), qos=1, retain=True)
            await asyncio.to_thread(sent.wait_for_publish, 5)
            await wait_until(lambda: watcher.last() == newer, message="the other writer's copy never came")
            bridge._publish_retained(rid, json.dumps(older))  # settled before the newer one, sent after it
            await wait_until(lambda: len(watcher.received) >= 3, message="the committed status was not sent again")
            assert [payload for _, payload in watcher.received] == [newer, older, newer]
            assert bridge.metrics.registry.get_sample_value("bridge_retained_republished_total") == 1
            await settle_time(0.5)
            assert len(watcher.received) == 3  # the committed one, acknowledged, is not sent again


async def test_a_stop_applied_by_a_bridge_that_died_before_settling_is_settled_by_the_next(
    env: dict[str, Any], stack: Any
) -> None:
    # Seen in a kill-bridge churn run: the bridge applied a graceful stop and published DEVICE_OFFLINE,
    # was killed before settling the restaurant, and the device was back before the restarted bridge
    # settled every restaurant, so the offline stretch never became a STATUS_CHANGED. The stop left the
    # restaurant's facts unsettled in Redis; the next bridge settles it before it applies anything newer
    # of it: Mosquitto's redelivered stop, or the birth (amqtt's clean session redelivers nothing).
    settings, tap = env["settings"], env["tap"]
    rid = f"r-died-{uuid.uuid4().hex[:8]}"
    device = Device(env["url"], rid, await make_restaurant(settings, stack, rid))
    instance = uuid.uuid4().hex[:8]  # the same MQTT session for both bridges
    first = Bridge(settings, instance)
    task = asyncio.create_task(first.run())
    try:
        await bridge_converged(first, task)
        await asyncio.to_thread(device.connect, 1)
        await tap.wait_for(rid, "STATUS_CHANGED")
        stuck = asyncio.Event()

        async def dies_before_settling(*_args: Any, **_kwargs: Any) -> None:
            stuck.set()
            await asyncio.Event().wait()  # until the task is cancelled: its batch is never acknowledged

        first._settle = dies_before_settling  # type: ignore[method-assign]
        await asyncio.to_thread(device.graceful)
        offline = await tap.wait_for(rid, "DEVICE_OFFLINE")
        await wait_until(stuck.is_set, message="the stop never reached the settle")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
    await asyncio.to_thread(device.connect, 2)  # back while no bridge runs
    async with running_bridge(settings, instance) as second:
        changed = await tap.wait_for(rid, "STATUS_CHANGED", 3, timeout=20)
        assert [(e["data"]["online"], e["data"]["reason"]) for e in changed] == [
            (True, None), (False, "DISCONNECTED"), (True, None)
        ]  # fmt: skip
        assert changed[1]["data"]["since"] == offline[0]["ts"].replace("+00:00", "Z")
        assert second.metrics.registry.get_sample_value("bridge_unsettled_settles_total") == 1
    await asyncio.to_thread(device.stop)


@ONE_BROKER
async def test_a_batch_retried_after_its_facts_were_applied_still_settles_them(env: dict[str, Any], stack: Any) -> None:
    # Redis went away between a batch's facts and its settle: the batch is retried, and its facts now
    # read as already applied (no device transition), so nothing used to settle the restaurant. The
    # stop stayed out of the status and the history until some later change of the restaurant.
    settings, tap, service = env["settings"], env["tap"], env["service"]
    rid = f"r-retried-{uuid.uuid4().hex[:8]}"
    device = Device(env["url"], rid, await make_restaurant(settings, stack, rid))
    async with running_bridge(settings) as bridge:
        await asyncio.to_thread(device.connect, 1)
        await tap.wait_for(rid, "STATUS_CHANGED")
        settle = bridge._settle
        calls: list[Sequence[str]] = []

        async def redis_away_once(restaurant_ids: Sequence[str], *args: Any, **kwargs: Any) -> None:
            calls.append(restaurant_ids)
            if len(calls) == 1:
                raise redis.exceptions.ConnectionError("Redis went away (injected)")
            await settle(restaurant_ids, *args, **kwargs)

        bridge._settle = redis_away_once  # type: ignore[method-assign]
        await asyncio.to_thread(device.graceful)
        offline = await tap.wait_for(rid, "DEVICE_OFFLINE")
        changed = await tap.wait_for(rid, "STATUS_CHANGED", 2, timeout=10)
        assert (changed[1]["data"]["online"], changed[1]["data"]["reason"]) == (False, "DISCONNECTED")
        assert changed[1]["data"]["since"] == offline[0]["ts"].replace("+00:00", "Z")
        assert [list(c) for c in calls[:2]] == [[rid], [rid]]
        assert bridge.metrics.registry.get_sample_value("bridge_unsettled_settles_total") == 1
        assert bridge.metrics.registry.get_sample_value("bridge_batch_retries_total") == 1
        assert not (await status_of(service, rid)()).online
        await settle_time(0.5)
        assert len(tap.of(rid, "DEVICE_OFFLINE")) == 1  # the retried batch published its event once


@ONE_BROKER
async def test_statuses_settled_while_device_events_are_confirmed_still_follow_them(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bridge settles a batch's restaurants while their DEVICE_ONLINE events wait for RabbitMQ's
    # confirms, and settles its next few hundred while the last ones' STATUS_CHANGED wait. Slow
    # confirms of the device events (here 0.3 s each) must still not let any STATUS_CHANGED overtake.
    settings, tap = env["settings"], env["tap"]
    monkeypatch.setattr("bridge.worker.SETTLE_BATCH", 4)  # 30 restaurants: 8 batches, each overlapping the next
    rids = [f"r-overlap-{n:02d}-{uuid.uuid4().hex[:6]}" for n in range(30)]
    async with running_bridge(settings) as bridge:
        await bridge.store.put_profiles({rid: profile_json("A", "UTC", ALWAYS_OPEN) for rid in rids})
        publish, settle_batch = bridge.publisher.publish, bridge.status.settle_batch
        confirming: list[str] = []  # DEVICE_ONLINE events not confirmed yet
        overlapped: list[int] = []  # how many were still unconfirmed as each batch began to settle

        async def slow_device_events(event: Any) -> None:
            if event.type.value == "DEVICE_ONLINE":
                confirming.append(event.restaurant_id)
                await asyncio.sleep(0.3)
                await publish(event)
                confirming.remove(event.restaurant_id)
            else:
                assert event.restaurant_id not in confirming, "a STATUS_CHANGED before its device event"
                await publish(event)

        async def settling(restaurant_ids: Sequence[str], *args: Any, **kwargs: Any) -> Any:
            if set(restaurant_ids) <= set(rids):  # not a sweep's settle of an earlier test's restaurant
                overlapped.append(len(confirming))
            return await settle_batch(restaurant_ids, *args, **kwargs)

        monkeypatch.setattr(bridge.publisher, "publish", slow_device_events)
        monkeypatch.setattr(bridge.status, "settle_batch", settling)
        link, now = bridge.links[0], time.monotonic()
        births = [
            (Inbound(link, f"restaurants/{rid}/devices/tablet/presence", b"{}", 1, False, 0, now), rid, "tablet", 1,
             DeviceState.ONLINE, None)
            for rid in rids
        ]  # fmt: skip
        await bridge._apply_presence(births)  # one batch, as a storm's births arrive
        for rid in rids:
            await tap.wait_for(rid, "STATUS_CHANGED")
        await settle_time(0.5)
        expected = ["DEVICE_ONLINE", "STATUS_CHANGED"]
        for queue in (settings.dashboard_queue, settings.aggregator_queue):
            for rid in rids:
                assert [e["type"] for e in tap.of(rid, queue=queue)] == expected, (rid, queue)
        assert bridge.metrics.registry.get_sample_value("bridge_status_changes_total") == len(rids)
        assert len(overlapped) == 8 and max(overlapped) == len(rids)  # settled while the confirms were awaited

        async def all_confirmed() -> bool:
            return all([await outbox_empty(bridge.store, rid) for rid in rids])

        await wait_until(all_confirmed, 10, message="events or retained statuses still held")


@ONE_BROKER
async def test_a_stop_drains_for_a_bounded_time_and_leaves_the_rest_to_its_session(
    env: dict[str, Any], stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # The 100,000 fleet's own stop left ~50,000 messages in the bridge at its SIGTERM; applying them all ran
    # past the 30 s after which it was killed. Now it applies what it can in `bridge_stop_drain_s` and leaves
    # the rest unacknowledged: the next bridge of the same session applies it, each change announced once.
    settings, tap, service = env["settings"], env["tap"], env["service"]
    bounded = settings.model_copy(update={"bridge_stop_drain_s": 0.5, "heartbeat_batch_max": 1, "stale_after_s": 60.0})
    rids = [f"r-drain-{n}-{uuid.uuid4().hex[:6]}" for n in range(6)]
    devices = [Device(env["url"], rid, await make_restaurant(bounded, stack, rid)) for rid in rids]
    instance = uuid.uuid4().hex[:8]
    try:
        bridge = Bridge(bounded, instance)
        task = asyncio.create_task(bridge.run())
        await bridge_converged(bridge, task)
        process = bridge._process

        async def slow(batch: Sequence[Inbound]) -> None:  # a bridge far behind its brokers
            await asyncio.sleep(1.0)
            await process(list(batch))

        bridge._process = slow  # type: ignore[assignment]
        for n, device in enumerate(devices):
            await asyncio.to_thread(device.connect, n + 1)
        await wait_until(lambda: len(bridge.inbox) >= 3, 10, message="the births never queued up")
        caplog.set_level(logging.WARNING, logger="bridge.worker")
        bridge.request_stop()
        await asyncio.wait_for(task, 20)
        left = [r.getMessage() for r in caplog.records if "left unacknowledged" in r.getMessage()]
        assert len(left) == 1 and "0.5 s of draining" in left[0], f"everything was drained: {left}"
        async def all_online() -> bool:  # as committed (the devices send no heartbeats); Redis, not MongoDB:
            snaps = await service.store.snapshots(rids)  # this bridge's close also closed Beanie's client
            return all(snap.last_status is not None and snap.last_status.online for snap in snaps)

        assert not await all_online()  # some births were not applied
        async with running_bridge(bounded, instance):  # the same session
            await wait_until(all_online, 20, message="not every birth applied")
            for rid in rids:
                await tap.wait_for(rid, "STATUS_CHANGED")
            await settle_time(0.5)
        for rid in rids:
            assert [e["type"] for e in tap.of(rid)] == ["DEVICE_ONLINE", "STATUS_CHANGED"], rid
    finally:
        for device in devices:
            await asyncio.to_thread(device.stop)
