"""Publishing the outboxes of restaurants held while RabbitMQ was away (the bridge's and the scheduler's).

Both writers keep going during an outage: committed events stay in their restaurant's Redis outbox and
the restaurant is "held", so its newer events wait behind its older ones. Once RabbitMQ answers, each
held restaurant's outbox is published oldest field first (fields start with their commit time) and
cleared, and the restaurant is let go when a read finds its outbox empty.
"""

from collections.abc import Awaitable, Callable

from core.messages import Event
from core.presence_store import PresenceStore


async def publish_held(
    store: PresenceStore,
    held: set[str],
    publish: Callable[[Event], Awaitable[None]],
    outages: tuple[type[BaseException], ...],
) -> tuple[int, bool]:
    """Publish the held restaurants' outboxes and let go of each one emptied.

    Returns (events published, went through all of them). Stops at the first outage, leaving the rest
    held: call it again later. Restaurants held meanwhile may still be held when it went through.
    """
    published = 0
    for rid in sorted(held):
        while True:
            snap = await store.snapshot(rid)
            if not snap.outbox:
                # No await between this read and the discard: a commit after it publishes by itself.
                held.discard(rid)
                break
            names = sorted(snap.outbox)
            try:
                for name in names:
                    await publish(Event.model_validate_json(snap.outbox[name]))
                    published += 1
            except outages:
                return published, False
            await store.clear_outbox(rid, names)
    return published, True
