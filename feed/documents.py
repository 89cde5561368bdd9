"""The cold cache of current statuses: what a dashboard snapshot is built from after a restart."""

from typing import Any

from beanie import Document
from pydantic import Field


class DashboardStatus(Document):
    """The latest status of one restaurant as the feed sequenced it; `_id` = the restaurant id.

    Written by the feed worker with a conditional upsert (newer `ts_us` wins), read whole once per API
    process: FerretDB scans for any filter but `_id`, so nothing here is queried by another field.
    """

    id: str  # type: ignore[assignment]  # the restaurant id
    seq: int  # the feed sequence number of this status
    ts_us: int  # when the status was derived (the event's ts, µs): orders late deliveries
    group: str | None = None
    status: dict[str, Any] = Field(default_factory=dict)  # DerivedStatus JSON

    class Settings:
        name = "dashboard_statuses"
