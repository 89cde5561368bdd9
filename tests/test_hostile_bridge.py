"""Hostile MQTT input: 10,000 malformed messages through real Mosquitto into a real bridge.

Hypothesis draws the storm (bad JSON, wrong types, oversized payloads, topics that do not parse,
unknown restaurants, topics the broker never hands the bridge, binary garbage, unicode); it is then
published in bulk. Every message the bridge can see must be counted under its reason, dead-lettered
byte for byte with its topic, and the bridge must go on: a valid birth afterwards turns its
restaurant online.

Who can publish what is the broker's ACL (docs/architecture.md, Credentials): the platform user may
write only `restaurants/+/status` and, through the `%u` pattern, `restaurants/platform/devices/…`
(a restaurant that does not exist); a restaurant only under its own id. So the storm comes from three
senders: a provisioned restaurant (bad payloads and device ids on its own topics), the platform user
(unknown restaurant), and a broker login whose name is not a valid id (a restaurant id that does not
parse: a password file edited by hand). Whatever else they publish the broker drops silently.
"""

import asyncio
import json
import logging
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from typing import Any, NamedTuple

import aio_pika
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from redis.asyncio import Redis

from bridge import dead_letters
from core.db import open_mongo
from core.mqtt_passwords import hash_password, upsert_password_entries
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status_service import StatusService
from tests.devices import Device, make_restaurant
from tests.helpers import wait_until
from tests.test_bridge import running_bridge

STORM = 10_000
HUGE = (1024 * 1024, 3 * 1024 * 1024)  # two payloads far above any sane limit, besides the drawn ones
MAX_EPOCH = 2**53 - 1
# The protocol's id rule, written out again here so the test does not trust the code under test.
VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEVICE_TOPIC = re.compile(r"restaurants/([^/]*)/devices/([^/]*)/(presence|heartbeat)")


class Msg(NamedTuple):
    sender: str  # "restaurant", "platform" or "badname"
    topic: str
    payload: bytes
    # What the payload is, by construction: "json" (not JSON), "schema" (JSON, wrong shape), "valid".
    kind: str


def ok_id(value: str) -> bool:
    return VALID_ID.fullmatch(value) is not None


# --- strategies

# Characters Mosquitto takes in a topic level: no wildcards, no separator, no controls (it refuses
# U+0000-U+001F and U+007F-U+009F), no surrogates or noncharacters (not valid UTF-8 for MQTT).
LEVEL_CHARS = st.characters(exclude_categories=("Cs", "Cc", "Cn"), exclude_characters="/+#")
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
GOOD_ID = st.text(ID_ALPHABET, min_size=1, max_size=12)
BAD_ID = st.one_of(
    st.just(""),
    st.tuples(GOOD_ID, st.integers(65, 90)).map(lambda t: (t[0] * 90)[: t[1]]),  # too long
    st.text(LEVEL_CHARS, min_size=1, max_size=20).filter(lambda s: not ok_id(s)),
)
LEVEL_WORD = st.text(LEVEL_CHARS, min_size=1, max_size=10)
KIND = st.sampled_from(["presence", "heartbeat"])
EPOCH = st.integers(0, MAX_EPOCH)
TS = st.integers(0, 2**62)
JUNK_SCALAR = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
)
JUNK = st.one_of(
    JUNK_SCALAR,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
NOT_AN_EPOCH = st.one_of(
    JUNK,
    st.integers(max_value=-1),
    st.integers(min_value=MAX_EPOCH + 1, max_value=2**70),
    st.integers(0, 9).map(str),  # "3" is not an epoch (strict)
)
NOT_A_TS = st.one_of(JUNK, st.integers(max_value=-1), st.integers(0, 9).map(str))
NOT_A_STATE = st.one_of(JUNK, st.text(max_size=12).filter(lambda s: s not in ("online", "offline")))
NOT_A_CAUSE = st.one_of(
    st.booleans(),
    st.integers(),
    st.lists(st.none(), max_size=1),
    st.text(max_size=12).filter(lambda s: s != "graceful"),
)


SHAPE_BREAKS = {
    "presence": st.sampled_from(["epoch", "ts", "missing", "not an object", "state", "cause"]),
    "heartbeat": st.sampled_from(["epoch", "ts", "missing", "not an object"]),
}
REQUIRED = {"presence": st.sampled_from(["epoch", "ts", "state"]), "heartbeat": st.sampled_from(["epoch", "ts"])}
NOT_AN_OBJECT = st.one_of(JUNK_SCALAR, st.lists(JUNK_SCALAR, max_size=3))
# An extra key must not be one of the payload's own fields: a "valid" heartbeat whose extra key is "ts"
# with a junk value is not valid. In two fresh-clone runs the bridge counted 3 bad_heartbeat where the
# test expected unknown_restaurant (the draws of a full run differ from those of this file alone).
EXTRA_KEY = st.text(LEVEL_CHARS, min_size=1, max_size=8).filter(lambda k: k not in ("epoch", "ts", "state", "cause"))
STATES = st.sampled_from(["online", "offline"])
BINARY = st.binary(max_size=200)
ANY_TEXT = st.text(max_size=60)
BLANKS = st.sampled_from([b"", b" ", b"\n\t"])
TRAILERS = st.sampled_from([b"}", b",", b"x", b"{}"])
NOT_JSON_KINDS = st.sampled_from(["binary", "truncated", "text", "blank", "trailing"])


@cache
@st.composite
def valid_object(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {"epoch": draw(EPOCH), "ts": draw(TS)}
    if kind == "presence":
        body["state"] = draw(STATES)
        if body["state"] == "offline" and draw(st.booleans()):
            body["cause"] = "graceful"
    if draw(st.booleans()):
        body[draw(EXTRA_KEY)] = draw(JUNK_SCALAR)  # extra keys are allowed
    return body


def encode(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode()


@cache
@st.composite
def wrong_shape(draw: st.DrawFn, kind: str) -> bytes:
    """Valid JSON that breaks the schema in one place."""
    body = draw(valid_object(kind))
    how = draw(SHAPE_BREAKS[kind])
    if how == "epoch":
        body["epoch"] = draw(NOT_AN_EPOCH)
    elif how == "ts":
        body["ts"] = draw(NOT_A_TS)
    elif how == "state":
        body["state"] = draw(NOT_A_STATE)
    elif how == "cause":
        body["cause"] = draw(NOT_A_CAUSE)
    elif how == "missing":
        del body[draw(REQUIRED[kind])]
    else:
        return encode(draw(NOT_AN_OBJECT), draw(st.booleans()))
    return encode(body, draw(st.booleans()))


@cache
@st.composite
def not_json(draw: st.DrawFn, kind: str) -> bytes:
    """Bytes no JSON parser can take, by construction."""
    how = draw(NOT_JSON_KINDS)
    if how == "binary":
        return b"\xff" + draw(BINARY)  # 0xFF never occurs in UTF-8
    if how == "truncated":
        whole = encode(draw(valid_object(kind)), draw(st.booleans()))
        return whole[: draw(st.integers(0, len(whole) - 1))]  # an object without its closing brace
    if how == "text":
        return ("§" + draw(ANY_TEXT)).encode("utf-8", "surrogatepass")
    if how == "blank":
        return draw(BLANKS)
    return encode(draw(valid_object(kind)), True) + draw(TRAILERS)


@cache
def oversized_seed(kind: str) -> st.SearchStrategy[bytes]:
    return st.one_of(wrong_shape(kind), not_json(kind), valid_object(kind).map(lambda b: encode(b, False)))


@st.composite
def oversized(draw: st.DrawFn, kind: str, max_bytes: int) -> bytes:
    """Above max_payload_bytes: a drawn seed repeated to a drawn size (drawing every byte would be slow)."""
    unit = draw(oversized_seed(kind))
    size = draw(st.one_of(st.integers(max_bytes + 1, 4 * max_bytes), st.integers(4 * max_bytes, 32 * max_bytes)))
    unit = unit or b" "
    return (unit * (size // len(unit) + 1))[:size]


@cache  # strategies built once: building and validating them on every draw was most of the cost
def payload(kind: str, max_bytes: int, allow_valid: bool) -> st.SearchStrategy[tuple[bytes, str]]:
    choices = [
        not_json(kind).map(lambda p: (p, "json")),
        wrong_shape(kind).map(lambda p: (p, "schema")),
        oversized(kind, max_bytes).map(lambda p: (p, "oversized")),
    ]
    if allow_valid:
        choices.append(valid_object(kind).map(lambda b: (encode(b, False), "valid")))
    return st.one_of(choices)


@st.composite
def message(draw: st.DrawFn, names: dict[str, str], max_bytes: int) -> Msg:
    sender = draw(st.sampled_from(["restaurant", "restaurant", "platform", "badname"]))
    user = names[sender]
    kind = draw(KIND)
    shape = draw(st.sampled_from(["device", "device", "device", "bad device", "unseen"]))
    if shape == "unseen":
        # Never handed to the bridge: wrong levels, a topic it does not subscribe to, someone else's topic.
        word = draw(LEVEL_WORD)
        topic = draw(st.sampled_from([
            f"restaurants/{user}/devices/{word}/{kind}/extra",
            f"restaurants/{user}/devices/{word}",
            f"restaurants/{user}/{word}",
            f"{word}/{kind}",
            f"restaurants/other-{user}/devices/tablet/{kind}",
        ]))  # fmt: skip
    else:
        device = draw(BAD_ID if shape == "bad device" else GOOD_ID)
        topic = f"restaurants/{user}/devices/{device}/{kind}"
    body, what = draw(payload(kind, max_bytes, allow_valid=sender != "restaurant"))
    return Msg(sender, topic, body, what)


def draw_storm(names: dict[str, str], max_bytes: int, total: int) -> list[Msg]:
    """`total` messages drawn by Hypothesis, in lists of 40 (one big list would exceed its buffer)."""
    storm: list[Msg] = []
    for chunk_seed in range(1000):
        if len(storm) >= total:
            break

        @seed(chunk_seed)
        @hyp_settings(
            max_examples=max(1, math.ceil((total - len(storm)) / 40)),
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(message(names, max_bytes), min_size=40, max_size=40))
        def collect(batch: list[Msg]) -> None:
            storm.extend(batch)

        collect()
    return storm[:total]


def expected_reason(msg: Msg, names: dict[str, str], known: str, max_bytes: int) -> str | None:
    """What the bridge must say about `msg`, or None if the broker never hands it over."""
    match = DEVICE_TOPIC.fullmatch(msg.topic)
    if match is None or match.group(1) != names[msg.sender]:  # not subscribed, or refused by the ACL
        return None
    rid, device, kind = match.groups()
    if not (ok_id(rid) and ok_id(device)):
        return "bad_topic"
    if len(msg.payload) > max_bytes:
        return "oversized_payload"
    if msg.kind == "json":
        return "bad_json"
    if msg.kind == "schema":
        return f"bad_{kind}"
    assert msg.kind == "valid" and rid != known
    return "unknown_restaurant"


# --- MQTT senders


@contextmanager
def mqtt_sender(host: str, port: int, username: str, password: str) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(username, password)
    client.max_inflight_messages_set(1000)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        connected.set()

    client.on_connect = on_connect
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(10) and not refused, f"{username!r} could not connect: {refused}"
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(senders: dict[str, mqtt.Client], storm: list[Msg]) -> None:
    """QoS 1, so every message is on the broker (or refused by its ACL) before this returns."""
    infos = [senders[m.sender].publish(m.topic, m.payload, qos=1) for m in storm]
    deadline = time.monotonic() + 60
    for info in infos:
        info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert info.is_published(), "the broker did not acknowledge the storm"
    # A sender kicked off by the broker (a topic it refuses outright) would drop the rest silently.
    assert all(client.is_connected() for client in senders.values())


async def purge_dead_letters(settings: Settings) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(settings.amqp_name(settings.mqtt_dead_letter_queue), passive=True)
        await queue.purge()


async def read_dead_letters(settings: Settings, count: int) -> list[tuple[str, bytes, str]]:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.declare_queue(settings.amqp_name(settings.mqtt_dead_letter_queue), passive=True)
        assert queue.declaration_result.message_count == count
        letters: list[tuple[str, bytes, str]] = []
        async with queue.iterator(no_ack=True) as messages:
            async for message in messages:
                headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in message.headers.items()}
                letters.append((str(headers["topic"]), message.body, str(headers["reason"])))
                if len(letters) == count:
                    break
        return letters


@pytest.mark.timeout(240)
async def test_a_storm_of_malformed_messages_is_dead_lettered_and_the_bridge_goes_on(
    settings: Settings, stack: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One summary line an hour at most: the whole test then logs exactly one, whatever its pace.
    monkeypatch.setattr(dead_letters, "LOG_EVERY_S", 3600.0)
    bridge_settings = settings.model_copy(
        update={"bridge_metrics_port": 0, "mqtt_shared_group": f"g{uuid.uuid4().hex[:8]}"}
    )
    max_bytes = bridge_settings.max_payload_bytes
    tag = uuid.uuid4().hex[:6]
    known = f"hostile-{tag}"
    names = {"restaurant": known, "platform": stack.platform_user, "badname": f"bad.name {tag}"}
    mongo = await open_mongo(bridge_settings)
    secret = await make_restaurant(bridge_settings, stack, known)
    badname_password = uuid.uuid4().hex
    upsert_password_entries(stack.passwd_file, {names["badname"]: hash_password(badname_password)})
    stack.reload_brokers()
    passwords = {"restaurant": secret, "platform": stack.platform_password, "badname": badname_password}

    storm = draw_storm(names, max_bytes, STORM - len(HUGE))
    storm += [Msg("restaurant", f"restaurants/{known}/devices/tablet/presence", b"{" * size, "json") for size in HUGE]
    expected = [(m, expected_reason(m, names, known, max_bytes)) for m in storm]
    seen = [(m, reason) for m, reason in expected if reason is not None]
    by_reason = Counter(reason for _, reason in seen)
    # The storm must exercise every way to be wrong, not just the easy ones.
    assert set(by_reason) == {
        "bad_topic", "oversized_payload", "bad_json", "bad_presence", "bad_heartbeat", "unknown_restaurant"
    }, by_reason  # fmt: skip
    assert len(seen) < len(storm)  # and some the broker keeps from the bridge

    redis = Redis.from_url(bridge_settings.redis_url, decode_responses=True)
    service = StatusService(PresenceStore(redis, bridge_settings.redis_prefix), timedelta(seconds=120))
    host, port = stack.mosquitto_url.removeprefix("mqtt://").split(":")
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.dead_letters"):
            async with running_bridge(bridge_settings) as bridge:
                registry = bridge.metrics.registry

                def invalid(reason: str) -> float:
                    return registry.get_sample_value("bridge_invalid_messages_total", {"reason": reason}) or 0.0

                # The broker is shared with the other tests: the retained presence they left is read at start
                # (and dead-lettered when junk). Count from here, with the dead-letter queue emptied.
                await purge_dead_letters(bridge_settings)
                before = {reason: invalid(reason) for reason in (*by_reason, "batch_error")}

                def done() -> bool:
                    return all(invalid(reason) - before[reason] >= count for reason, count in by_reason.items())

                with (
                    mqtt_sender(host, int(port), names["restaurant"], passwords["restaurant"]) as restaurant,
                    mqtt_sender(host, int(port), names["platform"], passwords["platform"]) as platform,
                    mqtt_sender(host, int(port), names["badname"], passwords["badname"]) as badname,
                ):
                    senders = {"restaurant": restaurant, "platform": platform, "badname": badname}
                    await asyncio.to_thread(publish_all, senders, storm)
                    try:
                        await wait_until(done, 60)
                    except AssertionError:
                        # Once, in a full run, this waited out its 60 s (17-23 s in every other run): say
                        # which reasons fell short and by how much, and whether the bridge still took any.
                        counted = {reason: invalid(reason) - before[reason] for reason in (*by_reason, "batch_error")}
                        raise AssertionError(f"not every malformed message was counted within 60 s: counted "
                                             f"{counted}, expected {dict(by_reason)}") from None  # fmt: skip

                for reason, count in by_reason.items():
                    assert invalid(reason) - before[reason] == count, reason
                assert invalid("batch_error") == before["batch_error"] == 0

                # The bridge is still there, and still does its job.
                device = Device(stack.mosquitto_url, known, secret)
                await asyncio.to_thread(device.connect, 1)
                try:
                    await wait_until(lambda: _online(service, known), 20, message="birth after the storm")
                finally:
                    await asyncio.to_thread(device.stop)

        # Every message the bridge saw, byte for byte with its topic and reason; nothing else.
        letters = await read_dead_letters(bridge_settings, len(seen))
        want = Counter((m.topic, m.payload, reason) for m, reason in seen)
        assert Counter(letters) == want
        # A flood is summarised in the log, not written line by line.
        lines = [r for r in caplog.records if r.name == "bridge.dead_letters"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    finally:
        await redis.aclose()
        await mongo.close()


async def _online(service: StatusService, rid: str) -> bool:
    statuses, _ = await service.current([rid])
    return bool(statuses and statuses[0].online)
