"""A restaurant's online/offline timeline from the status history (DESIGN.md §6)."""

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AUTH_ERRORS, CurrentPrincipal, SettingsDep, ensure_can_read
from api.models import CALENDAR_MESSAGE, RestaurantId, in_calendar
from core.documents import Restaurant
from core.history_store import restaurant_timeline
from core.messages import utc_now
from core.status import OfflineReason

router = APIRouter(prefix="/restaurants", tags=["history"])

DEFAULT_SPAN = timedelta(hours=24)
ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    status.HTTP_404_NOT_FOUND: {"description": "no such restaurant"},
}


class TimelineInterval(BaseModel):
    start: datetime
    end: datetime
    online: bool
    reason: OfflineReason | None = Field(description="CLOSED, UNAVAILABLE or DISCONNECTED when offline")
    detail: str | None = Field(description="the unavailability's reason when UNAVAILABLE")


class Timeline(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    restaurant_id: str
    from_: datetime = Field(alias="from")
    to: datetime
    intervals: list[TimelineInterval] = Field(
        description="contiguous and ordered; the last ends at min(now, to). They begin later than `from` "
        "when the history starts later (nothing is known before a restaurant's first status)."
    )


def _invalid(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": message, "input": None}])


def checked_range(
    start: datetime | None, end: datetime | None, now: datetime, max_days: int
) -> tuple[datetime, datetime]:
    """[from, to) with the defaults filled in (the last 24 h, or 24 h from/to the one given); 422 when wrong."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise _invalid(name, "must carry a UTC offset, e.g. 2026-11-25T10:00:00Z or ...-03:00")
        if value is not None and not in_calendar(value.date()):
            raise _invalid(name, CALENDAR_MESSAGE)
    if end is None:
        end = now if start is None else start + DEFAULT_SPAN
    if start is None:
        start = end - DEFAULT_SPAN
    if start >= end:
        raise _invalid("from", "must be before to")
    if end - start > timedelta(days=max_days):
        raise _invalid("to", f"the range may span at most {max_days} days")
    return start, end


@router.get("/{restaurant_id}/timeline", responses=ERRORS, response_model_by_alias=True)
async def timeline(
    restaurant_id: RestaurantId,
    principal: CurrentPrincipal,
    settings: SettingsDep,
    start: Annotated[datetime | None, Query(alias="from", description="ISO-8601 with offset; default to-24h")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="ISO-8601 with offset; default now")] = None,
) -> Timeline:
    """Intervals `{start, end, online, reason, detail}` over [from, to), at most `timeline_max_days` days.

    A restaurant token may read only its own. The last interval, if still open, ends at min(now, to);
    the timeline starts at the restaurant's first known status when that is after `from`.
    """
    ensure_can_read(principal, [restaurant_id])
    now = utc_now()
    start, end = checked_range(start, end, now, settings.timeline_max_days)
    doc = await Restaurant.get(restaurant_id)
    if doc is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"unknown restaurant {restaurant_id!r}")
    spans = await restaurant_timeline(restaurant_id, start, end, now, doc.timezone)
    return Timeline.model_validate(
        {
            "restaurant_id": restaurant_id,
            "from": start,
            "to": end,
            "intervals": [
                TimelineInterval(start=s.start, end=s.end, online=s.online, reason=s.reason, detail=s.detail)
                for s in spans
            ],
        }
    )
