"""Shared fixtures: one private set of real servers per test session, one isolated namespace per test.

`stack` starts Redis, RabbitMQ, FerretDB, Mosquitto and amqtt on free loopback ports in a temporary
directory, so the tests run even while `make run` holds the fixed ports. With PRESENCE_TEST_REUSE
set, the servers of a running `make run` are used instead (faster edit-test loops). `make test` runs
the tests in two pytest-xdist workers, file by file, each with its own servers; the churn runs after,
alone (tests/test_churn_runs.py).
"""

import asyncio
import os
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from core.settings import Settings
from stack.backends import BackendPorts, Backends
from stack.process import port_accepts
from tests.helpers import BROKERS, wait_until

PLATFORM_USER = "platform"

# Under pytest-xdist (`make test` runs two workers), each worker and the servers it starts choose
# loopback ports from a part of the range of their own (stack/process.py `private_ports`).
if "PYTEST_XDIST_WORKER" in os.environ:
    _worker = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))
    os.environ.setdefault("PRESENCE_PORT_SLICE", f"{_worker}/{os.environ['PYTEST_XDIST_WORKER_COUNT']}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    if os.environ.get("PRESENCE_TEST_REUSE"):
        defaults, ports = Settings(), BackendPorts.fixed()
        var_dir = defaults.var_dir.resolve()
        yield Backends(
            var_dir,
            ports,
            platform_user=defaults.mqtt_username,
            platform_password=defaults.mqtt_password,
            with_amqtt=port_accepts(ports.amqtt),  # only under `python -m stack run --broker amqtt`
            log_dir=var_dir / "log",
        )
        return
    backends = Backends(
        tmp_path_factory.mktemp("stack"),
        BackendPorts.free(),
        platform_user=PLATFORM_USER,
        platform_password=secrets.token_urlsafe(16),
    )
    backends.start()
    try:
        yield backends
    finally:
        backends.stop()


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest, stack: Backends) -> str:
    """Each broker in turn (tests of the MQTT contract that both must keep)."""
    url: str | None = stack.mosquitto_url if request.param == "mosquitto" else stack.amqtt_url
    if url is None:
        pytest.skip("the amqtt broker is not part of this stack")
    return url


def run_in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """Run async clean-up on its own loop in a thread, away from the test's (already closed) loop."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="fixture-cleanup")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


async def drop_namespace(settings: Settings) -> None:
    """Delete what one test created: its Redis keys, its Mongo database, its RabbitMQ names."""
    import aio_pika
    from pymongo import AsyncMongoClient
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url)
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{settings.redis_prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await redis.delete(*batch)
                batch.clear()
        if batch:
            await redis.delete(*batch)
    finally:
        await redis.aclose()

    mongo: AsyncMongoClient = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000)
    try:
        await mongo.drop_database(settings.mongo_db)
    finally:
        await mongo.close()

    # Deleting a queue or exchange that was never declared is a no-op in RabbitMQ.
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (settings.dashboard_queue, settings.aggregator_queue):
            await channel.queue_delete(settings.amqp_name(queue))
            await channel.queue_delete(settings.amqp_name(f"{queue}.DLQ"))
        await channel.queue_delete(settings.amqp_name(settings.mqtt_dead_letter_queue))
        await channel.exchange_delete(settings.exchange)


@pytest.fixture
def settings(stack: Backends, tmp_path: Path) -> Iterator[Settings]:
    tag = uuid.uuid4().hex[:12]
    # core.provisioning SIGHUPs the Mosquitto named in <var_dir>/run/mosquitto.pid, as under `make run`.
    shared_pid_file = stack.mosquitto.pid_file
    if shared_pid_file.exists():
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "mosquitto.pid").write_text(shared_pid_file.read_text())
    test_settings = Settings(
        var_dir=tmp_path,
        redis_url=stack.redis_url,
        redis_prefix=f"t{tag}:",
        amqp_url=stack.amqp_url,
        amqp_prefix=f"t{tag}.",
        mongo_url=stack.mongo_url,
        mongo_db=f"t_{tag}",
        mqtt_brokers=[stack.mosquitto_url],
        # Shared subscriptions are per broker, not per prefix: a bridge left by another test (its
        # persistent session) would otherwise take a share of this test's messages.
        mqtt_shared_group=f"g{tag}",
        mqtt_username=stack.platform_user,
        mqtt_password=stack.platform_password,
        mosquitto_passwd_file=stack.passwd_file,
    )
    yield test_settings
    run_in_thread(drop_namespace(test_settings))


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The API with its lifespan running (Redis, MongoDB, RabbitMQ open) against this test's namespace."""
    from api.main import create_app

    api = create_app(settings)
    async with api.router.lifespan_context(api):
        # Status reads go through the API's copy of the views' facts from the first request on.
        copy = api.state.status_service.views.cache
        await wait_until(lambda: copy.tracking, message="the status view copy never started tracking")
        yield api
