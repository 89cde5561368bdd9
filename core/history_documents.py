"""Documents of the status history and the offline ranking (written by the aggregator only).

Every document is keyed by `_id` = its natural key and fetched by it (see core/history_store.py for
the layout and why). Point values are short lists rather than sub-documents: FerretDB decodes every
field of every document it returns, so fewer fields is faster.
"""

from datetime import datetime
from typing import Any

from beanie import Document
from pydantic import Field

from core.status import OfflineReason, StatusCore

# A status as stored: [online, reason, detail]; a point adds the event's ts (epoch ms) as a tie-break.
StoredCore = list[Any]


def store_core(core: StatusCore) -> StoredCore:
    return [core.online, core.reason.value if core.reason else None, core.detail]


def load_core(value: StoredCore) -> StatusCore:
    online, reason, detail = value[0], value[1], value[2]
    return StatusCore(online=bool(online), reason=OfflineReason(reason) if reason else None, detail=detail)


def day_doc_id(restaurant_id: str, day: str) -> str:
    return f"{restaurant_id}|{day}"


class HistoryHead(Document):
    """The latest known point of a restaurant: the status of ongoing intervals and after the last day."""

    id: str  # type: ignore[assignment]  # the restaurant id
    at: datetime
    status: StoredCore
    timezone: str  # the zone its history is kept in (that of its first event)
    first_day: str  # YYYY-MM-DD: the first local day with a point; nothing is known before it

    class Settings:
        name = "history_heads"


class HistoryDay(Document):
    """One restaurant's local day: its points and its consolidated closed DISCONNECTED time.

    `points` maps the instant in epoch ms (a string key) to [online, reason, detail, event ts ms]:
    applying an event again writes the same key and value, and an event that arrives late lands in
    its place. `before` is the status in force just before the day began (None: unknown, only on
    the first day). `offline_ms` counts only intervals closed by a later point; the open one is in
    OngoingOffline. Every day from the head's `first_day` to the head's day has a document.
    """

    id: str  # type: ignore[assignment]  # "{restaurant_id}|{YYYY-MM-DD}"
    points: dict[str, list[Any]] = Field(default_factory=dict)
    before: StoredCore | None = None
    offline_ms: int = 0

    class Settings:
        name = "history_days"


class OngoingOffline(Document):
    """A restaurant whose latest status is DISCONNECTED, since `since`: open time the ranking adds up to now."""

    id: str  # type: ignore[assignment]  # the restaurant id
    since: datetime
    timezone: str
    group: str

    class Settings:
        name = "history_ongoing"


class SlotDirectory(Document):
    """The restaurants of one ranking bucket in slot order, with their groups.

    A restaurant's slot is its position here; the day rollups of the bucket are arrays indexed by
    slot, so 100,000 totals of a day are a few binary fields instead of 100,000 document fields.
    Space-separated strings (ids and groups never contain spaces) decode far faster than arrays.
    """

    id: str  # type: ignore[assignment]  # the bucket number
    rids: str = ""
    groups: str = ""

    class Settings:
        name = "history_slots"


HISTORY_MODELS: list[type[Document]] = [HistoryHead, HistoryDay, OngoingOffline, SlotDirectory]
