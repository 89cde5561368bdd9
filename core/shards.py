"""Which broker shard a restaurant belongs to: one stable hash used by devices and the bridge."""

import hashlib


def shard_of(restaurant_id: str, shard_count: int) -> int:
    """A hash of the id that is the same in every process and Python version (unlike `hash()`)."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    digest = hashlib.blake2b(restaurant_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


def broker_for(restaurant_id: str, brokers: list[str]) -> str:
    return brokers[shard_of(restaurant_id, len(brokers))]
