"""core.batch_writes: an outage is waited out, a poison event is dead-lettered alone, a stop leaves the
batch unacknowledged (the aggregator and the feed write their batches through it)."""

import asyncio

from core.batch_writes import write_batch


class Outage(Exception):
    pass


class Retries:
    def __init__(self) -> None:
        self.count = 0

    def inc(self, amount: float = 1) -> None:
        self.count += int(amount)


class Store:
    """Fails with an outage `away` times, then refuses any batch holding a poison value."""

    def __init__(self, away: int = 0, poison: frozenset[int] = frozenset()) -> None:
        self.away, self.poison = away, poison
        self.written: list[int] = []
        self.poisoned: list[int] = []

    async def write(self, batch: list[int]) -> None:
        if self.away:
            self.away -= 1
            raise Outage("away")
        if self.poison & set(batch):
            raise ValueError("cannot store")
        self.written += batch

    async def dead_letter(self, item: int, exc: Exception) -> None:
        assert isinstance(exc, ValueError)
        self.poisoned.append(item)


async def run(store: Store, items: list[int], stop: asyncio.Event | None = None) -> tuple[list[int], int]:
    retries = Retries()
    written = await write_batch(items, store.write, outages=(Outage,), stop=stop or asyncio.Event(),
                                retries=retries, away="the store", poison=store.dead_letter)  # fmt: skip
    return written, retries.count


async def test_an_outage_is_retried_until_the_batch_is_written() -> None:
    store = Store(away=2)
    assert await run(store, [1, 2, 3]) == ([1, 2, 3], 2)
    assert store.written == [1, 2, 3]


async def test_a_poison_event_is_dead_lettered_alone_and_the_others_written() -> None:
    store = Store(poison=frozenset({2, 4}))
    written, _ = await run(store, [1, 2, 3, 4, 5])
    assert written == store.written == [1, 3, 5]
    assert store.poisoned == [2, 4]


async def test_stopped_during_an_outage_nothing_is_acknowledged() -> None:
    stop = asyncio.Event()
    stop.set()
    store = Store(away=1)
    assert await run(store, [1, 2], stop) == ([], 0)
    assert store.written == []
