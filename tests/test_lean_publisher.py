"""The events' own AMQP publisher (core/lean_publisher.py) against the real RabbitMQ.

What a consumer receives must be what aio-pika published before (body, persistence, id, type, order),
and every way a publish can fail must reach the caller as an outage (`PUBLISH_OUTAGES`), after which
publishing works again by itself.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aio_pika
import pytest
import uvloop
from pamqp import commands as spec
from pamqp import frame as amqp_frame
from pamqp.header import ContentHeader

from core.amqp import PUBLISH_OUTAGES
from core.lean_publisher import CHANNEL, Endpoint, LeanPublisher, content_frames
from core.settings import Settings
from tests.tcp_cut import CuttableRelay


def test_the_content_header_is_the_one_pamqp_writes() -> None:
    body = b'{"x": 1}' * 40
    properties = spec.Basic.Properties(
        content_type="application/json", delivery_mode=2, message_id=str(uuid.UUID(int=7)), message_type="STATUS"
    )
    expected = amqp_frame.marshal(ContentHeader(0, len(body), properties), CHANNEL)
    frames = content_frames(body, "application/json", str(uuid.UUID(int=7)), "STATUS", frame_max=100)
    assert frames.startswith(expected)
    # The body in frames of at most frame_max bytes, each with its 8 bytes of framing.
    rest, pieces = frames[len(expected) :], []
    while rest:
        size = int.from_bytes(rest[3:7], "big")
        assert rest[0] == 3 and size <= 100 - 8 and rest[7 + size] == 0xCE
        pieces.append(rest[7 : 7 + size])
        rest = rest[8 + size :]
    assert b"".join(pieces) == body and len(pieces) == 4


def test_urls_read_as_aio_pika_reads_them() -> None:
    assert Endpoint.from_url("amqp://u%40x:p%2Fw@h:5673/%2F") == Endpoint("h", 5673, "u@x", "p/w", "/", False)
    assert Endpoint.from_url("amqps://h/prod") == Endpoint("h", 5671, "guest", "guest", "prod", True)
    assert Endpoint.from_url("amqp://h").vhost == "/"
    with pytest.raises(ValueError, match="not an AMQP URL"):
        Endpoint.from_url("http://h/")


@pytest.fixture
async def exchange(settings: Settings) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractQueue]]:
    """A fanout exchange of this test's own with one queue bound to it."""
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    name = settings.amqp_name("lean")
    ex = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, auto_delete=True)
    queue = await channel.declare_queue(f"{name}.q", auto_delete=True)
    await queue.bind(ex)
    yield name, queue
    await channel.exchange_delete(name)
    await connection.close()


async def received(
    queue: aio_pika.abc.AbstractQueue, count: int, last: str | None = None
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """`count` messages, or all up to the one whose id is `last`."""
    out: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            out.append(message)
            if len(out) == count if last is None else message.message_id == last:
                break
    return out


async def test_a_consumer_gets_every_message_whole_persistent_and_in_order(
    settings: Settings, exchange: tuple[str, aio_pika.abc.AbstractQueue]
) -> None:
    name, queue = exchange
    publisher = LeanPublisher(settings.amqp_url, name)
    big = b"x" * 300_000  # more than one body frame
    ids = [str(uuid.uuid4()) for _ in range(500)]
    sent = asyncio.gather(*(publisher.publish(f'{{"n": {i}}}'.encode(), mid, "T") for i, mid in enumerate(ids)))
    await asyncio.wait_for(sent, 30)
    await publisher.publish(big, "big", "BIG")
    await publisher.close()
    messages = await asyncio.wait_for(received(queue, 501), 30)
    assert [m.message_id for m in messages] == [*ids, "big"]
    assert [m.body for m in messages[:3]] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    assert messages[-1].body == big and messages[-1].type == "BIG"
    assert {(m.content_type, m.delivery_mode, m.type) for m in messages[:-1]} == {
        ("application/json", aio_pika.DeliveryMode.PERSISTENT, "T")
    }


async def test_a_missing_exchange_is_an_outage_and_publishing_resumes_once_it_exists(settings: Settings) -> None:
    name = settings.amqp_name("lean-later")
    publisher = LeanPublisher(settings.amqp_url, name, retry_after_s=0.1)
    with pytest.raises(PUBLISH_OUTAGES, match="NOT_FOUND"):
        await asyncio.wait_for(publisher.publish(b"{}", "a", "T"), 10)
    connection = await aio_pika.connect(settings.amqp_url)
    channel = await connection.channel()
    ex = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, auto_delete=True)
    queue = await channel.declare_queue(f"{name}.q", auto_delete=True)
    await queue.bind(ex)
    try:
        await asyncio.sleep(0.1)
        await asyncio.wait_for(publisher.publish(b"{}", "b", "T"), 10)
        assert [m.message_id for m in await asyncio.wait_for(received(queue, 1), 10)] == ["b"]
    finally:
        await publisher.close()
        await channel.exchange_delete(name)
        await connection.close()


async def test_a_wrong_password_is_refused_with_its_reason(settings: Settings) -> None:
    parts = urlsplit(settings.amqp_url)
    wrong = settings.amqp_url.replace(f":{parts.password}@", ":not-the-password@", 1)
    publisher = LeanPublisher(wrong, settings.exchange)
    with pytest.raises(PUBLISH_OUTAGES, match="ACCESS_REFUSED"):
        await asyncio.wait_for(publisher.connect(), 10)


async def relayed(settings: Settings) -> tuple[CuttableRelay, str]:
    """An open relay to RabbitMQ that the test can cut or hush, and the AMQP URL through it."""
    at = urlsplit(settings.amqp_url)
    relay = CuttableRelay(at.hostname or "127.0.0.1", at.port or 5672)
    await relay.open()
    return relay, settings.amqp_url.replace(f":{at.port}/", f":{relay.port}/")


async def test_a_cut_connection_fails_what_waits_refuses_quickly_then_publishes_again(
    settings: Settings, exchange: tuple[str, aio_pika.abc.AbstractQueue]
) -> None:
    name, queue = exchange
    relay, url = await relayed(settings)
    publisher = LeanPublisher(url, name, retry_after_s=0.5)
    try:
        await publisher.publish(b"{}", "before", "T")
        waiting = asyncio.ensure_future(publisher.publish(b"{}", "cut", "T"))
        await relay.cut()
        with pytest.raises(ConnectionError, match="connection to RabbitMQ lost"):  # not a timeout: at once
            await asyncio.wait_for(waiting, 10)
        # While RabbitMQ cannot be reached, a publish is refused at once, not after a connect attempt each:
        # within retry_after_s the refusal is the same one, no new attempt made.
        with pytest.raises(PUBLISH_OUTAGES, match="cannot publish to RabbitMQ") as first:
            await asyncio.wait_for(publisher.publish(b"{}", "refused", "T"), 10)
        with pytest.raises(PUBLISH_OUTAGES, match="cannot publish to RabbitMQ") as again:
            await asyncio.wait_for(publisher.publish(b"{}", "refused again", "T"), 10)
        assert again.value is first.value
        await relay.open()
        await asyncio.sleep(0.5)
        await asyncio.wait_for(publisher.publish(b"{}", "after", "T"), 10)
    finally:
        await publisher.close()
        await relay.close()
    ids = [m.message_id for m in await asyncio.wait_for(received(queue, 0, last="after"), 10)]
    # "cut" may or may not have reached RabbitMQ before the cut: it was not confirmed, so not counted on.
    assert ids in (["before", "after"], ["before", "cut", "after"])


async def test_a_confirm_not_back_in_time_fails_its_own_publish_and_the_connection_goes_on(
    settings: Settings, exchange: tuple[str, aio_pika.abc.AbstractQueue]
) -> None:
    name, queue = exchange
    relay, url = await relayed(settings)
    publisher = LeanPublisher(url, name, confirm_timeout_s=0.5)
    loop = asyncio.get_running_loop()
    try:
        await publisher.publish(b"{}", "before", "T")
        relay.hold_replies()  # RabbitMQ takes the messages and says nothing
        started = loop.time()
        first = asyncio.ensure_future(publisher.publish(b"{}", "unconfirmed 1", "T"))
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(publisher.publish(b"{}", "unconfirmed 2", "T"))
        with pytest.raises(TimeoutError, match=r"did not confirm within 0\.5 s"):
            await asyncio.wait_for(first, 10)
        assert isinstance(TimeoutError(), PUBLISH_OUTAGES)  # the bridge then holds the events in Redis
        assert not second.done()  # each publish waits its own time, not the oldest one's
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(second, 10)
        assert loop.time() - started >= 0.8 - 0.05
        relay.release_replies()  # the late confirms come, and are ignored
        await asyncio.wait_for(publisher.publish(b"{}", "after", "T"), 10)  # the same connection
    finally:
        await publisher.close()
        await relay.close()
    ids = [m.message_id for m in await asyncio.wait_for(received(queue, 0, last="after"), 10)]
    assert ids == ["before", "unconfirmed 1", "unconfirmed 2", "after"]  # they were delivered, only late


def test_it_publishes_under_uvloop_as_the_api_runs_it(settings: Settings) -> None:
    """uvicorn runs the API on uvloop, whose transports are not asyncio's classes."""

    async def publish_one() -> str | None:
        name = settings.amqp_name("lean-uv")
        connection = await aio_pika.connect(settings.amqp_url)
        publisher = LeanPublisher(settings.amqp_url, name)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, auto_delete=True)
            queue = await channel.declare_queue(f"{name}.q", auto_delete=True)
            await queue.bind(exchange)
            await asyncio.wait_for(publisher.publish(b"{}", "uv", "T"), 10)
            message = await queue.get(timeout=10)
            await message.ack()
            await channel.exchange_delete(name)
            return message.message_id
        finally:
            await publisher.close()
            await connection.close()

    assert uvloop.run(publish_one()) == "uv"


async def test_a_closed_publisher_says_so(settings: Settings) -> None:
    publisher = LeanPublisher(settings.amqp_url, settings.exchange)
    await publisher.connect()
    await publisher.close()
    with pytest.raises(PUBLISH_OUTAGES, match="closed"):
        await publisher.publish(b"{}", "late", "T")
