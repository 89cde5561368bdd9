"""Live derived status of one restaurant or of a batch (DESIGN.md §5, §6)."""

import json
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError

from api.deps import AUTH_ERRORS, CurrentPrincipal, MetricsDep, SettingsDep, StatusServiceDep, ensure_can_read
from api.metrics import ApiMetrics
from api.models import RestaurantId, StatusBatch, StatusQuery
from api.security import Principal
from core.ids import ids_are_valid, is_valid_id
from core.messages import utc_now
from core.status import DerivedStatus
from core.status_service import StatusService

router = APIRouter(prefix="/restaurants", tags=["status"])

SHOWN_INVALID = 20
CHUNK = 1000  # the size of StatusService's own MongoDB lookups, so chunking adds no queries


def _invalid(loc: tuple[str, ...], message: str) -> RequestValidationError:
    # FastAPI's own 422 shape, so clients parse one kind of validation error.
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": None}])


def checked_ids(raw: Iterable[str], loc: tuple[str, ...], limit: int) -> list[str]:
    """Distinct ids in the order asked; 422 when none, too many, or some are not ids."""
    ids = list(dict.fromkeys(raw))
    if not ids:
        raise _invalid(loc, "at least one restaurant id is needed")
    if len(ids) > limit:
        raise _invalid(loc, f"at most {limit} restaurant ids per request, got {len(ids)}")
    if not ids_are_valid(ids):
        bad = [rid for rid in ids if not is_valid_id(rid)]
        shown = ", ".join(repr(rid[:80]) for rid in bad[:SHOWN_INVALID])
        more = f" and {len(bad) - SHOWN_INVALID} more" if len(bad) > SHOWN_INVALID else ""
        raise _invalid(loc, f"invalid restaurant ids (1-64 characters of A-Z a-z 0-9 _ -): {shown}{more}")
    return ids


async def _batch(ids: list[str], principal: Principal, service: StatusService, metrics: ApiMetrics) -> Response:
    ensure_can_read(principal, ids)
    metrics.status_ids.observe(len(ids))
    at = utc_now()  # one instant for the whole batch
    statuses: list[str] = []
    unknown: list[str] = []
    # Deriving 10,000 statuses is about a second of CPU: in chunks, the Redis round trip of each
    # chunk gives other requests their turn instead of stalling the loop for the whole batch.
    for start in range(0, len(ids), CHUNK):
        found, missing, from_views = await service.current_json(ids[start : start + CHUNK], now=at)
        statuses.extend(found)
        unknown.extend(missing)
        metrics.statuses.labels("view").inc(from_views)
        metrics.statuses.labels("derived").inc(len(found) - from_views)
    # Each status is already JSON (a standing view, or derived and serialised by pydantic-core); the
    # body is StatusBatch's, byte for byte (response_model keeps the schema; tests compare the two).
    body = f'{{"statuses":[{",".join(statuses)}],"unknown":{json.dumps(unknown, separators=(",", ":"))}}}'
    return Response(body, media_type="application/json")


@router.get("/status", response_model=StatusBatch, responses=AUTH_ERRORS)
async def statuses_by_query(
    principal: CurrentPrincipal,
    service: StatusServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    ids: Annotated[str, Query(description="comma-separated restaurant ids", examples=["demo-0001,demo-0002"])],
) -> Response:
    """Statuses of a short list of restaurants; unknown ids are listed in `unknown`."""
    parts = (part.strip() for part in ids.split(","))
    wanted = checked_ids((part for part in parts if part), ("query", "ids"), settings.max_status_ids)
    return await _batch(wanted, principal, service, metrics)


@router.post("/status/query", response_model=StatusBatch, responses=AUTH_ERRORS)
async def statuses_by_body(
    principal: CurrentPrincipal,
    service: StatusServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    query: StatusQuery,
) -> Response:
    """Statuses of up to `max_status_ids` restaurants at once; unknown ids are listed in `unknown`."""
    wanted = checked_ids(query.ids, ("body", "ids"), settings.max_status_ids)
    return await _batch(wanted, principal, service, metrics)


@router.get(
    "/{restaurant_id}/status",
    response_model=DerivedStatus,
    responses={**AUTH_ERRORS, status.HTTP_404_NOT_FOUND: {"description": "no such restaurant"}},
)
async def restaurant_status(
    restaurant_id: RestaurantId, principal: CurrentPrincipal, service: StatusServiceDep, metrics: MetricsDep
) -> Response:
    """One restaurant's status: a restaurant token may ask only for its own."""
    ensure_can_read(principal, [restaurant_id])
    # As a batch of one: its view where one stands, else derived (the same bytes either way).
    found, _unknown, from_views = await service.current_json([restaurant_id], now=utc_now())
    if not found:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"unknown restaurant {restaurant_id!r}")
    metrics.statuses.labels("view" if from_views else "derived").inc()
    return Response(found[0], media_type="application/json")
