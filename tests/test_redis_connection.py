"""PackedConnection packs a command of many arguments as redis-py would, byte for byte, and Redis takes it."""

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from core.redis_connection import MANY_ARGUMENTS, PackedConnection
from core.settings import Settings

arguments = st.one_of(
    st.text(max_size=40), st.binary(max_size=40), st.integers(min_value=-(2**63), max_value=2**63 - 1)
)


@given(st.lists(arguments, min_size=0, max_size=3 * MANY_ARGUMENTS))
def test_a_command_is_packed_as_redis_py_packs_it(rest: list[Any]) -> None:
    packed, reference = PackedConnection(decode_responses=True), Connection(decode_responses=True)
    command = ("EVALSHA", *rest)
    assert b"".join(packed.pack_command(*command)) == b"".join(reference.pack_command(*command))


def test_arguments_redis_py_refuses_or_splits_are_left_to_it() -> None:
    packed, reference = PackedConnection(), Connection()
    many = [f"k{i}" for i in range(MANY_ARGUMENTS)]
    assert b"".join(packed.pack_command("CONFIG GET", *many)) == b"".join(reference.pack_command("CONFIG GET", *many))
    assert b"".join(packed.pack_command("ZADD", *many, 1.5)) == b"".join(reference.pack_command("ZADD", *many, 1.5))
    with pytest.raises(DataError):
        packed.pack_command("MSET", *many, True)


async def test_redis_takes_a_command_of_many_keys_packed_so(settings: Settings) -> None:
    redis = Redis.from_url(settings.redis_url, decode_responses=True, connection_class=PackedConnection)
    prefix = f"{settings.redis_prefix}{uuid.uuid4().hex[:8]}:"
    pairs = {f"{prefix}{i}": f"välue {i}" for i in range(500)}
    try:
        await redis.mset(pairs)
        assert await redis.mget(list(pairs)) == list(pairs.values())
        assert await redis.delete(*pairs) == 500
    finally:
        await redis.aclose()
