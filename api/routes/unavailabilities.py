"""A restaurant's unavailabilities: schedule, cancel, list (DESIGN.md §1, §6)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from api.deps import AUTH_ERRORS, CurrentPrincipal, ensure_can_read
from api.models import RestaurantId
from api.security import Principal
from api.unavailability_models import (
    AwareDatetime,
    UnavailabilitiesPublic,
    UnavailabilityCreate,
    UnavailabilityPublic,
)
from core.documents import Role, UnavailabilityRecord
from core.errors import UnknownRestaurant
from core.messages import utc_now
from core.unavailabilities import (
    ChangeDeferred,
    InvalidUnavailability,
    UnavailabilityConflict,
    UnavailabilityService,
    UnknownUnavailability,
    public_view,
)

router = APIRouter(prefix="/restaurants/{restaurant_id}/unavailabilities", tags=["unavailabilities"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    status.HTTP_404_NOT_FOUND: {"description": "no such restaurant or unavailability"}
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    **NOT_FOUND,
    status.HTTP_409_CONFLICT: {"description": "already cancelled or ended, or too many scheduled"},
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "description": "Redis or MongoDB is away. If the detail says the change is recorded, it takes effect by "
        "itself once Redis answers: do not repeat it (a create's Location names it)"
    },
}


async def get_unavailabilities(request: Request) -> UnavailabilityService:
    service: UnavailabilityService = request.app.state.unavailabilities
    return service


UnavailabilitiesDep = Annotated[UnavailabilityService, Depends(get_unavailabilities)]


def ensure_can_manage(principal: Principal, restaurant_id: str) -> None:
    """The restaurant itself and admins schedule and cancel; sales only reads."""
    if principal.role is Role.SALES:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="role sales may only read unavailabilities")
    if not principal.can_read(restaurant_id):
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN, detail="a restaurant token may manage only its own restaurant"
        )


def _public(restaurant_id: str, record: UnavailabilityRecord) -> UnavailabilityPublic:
    return UnavailabilityPublic.model_validate(public_view(restaurant_id, record, utc_now()))


def _not_found(exc: UnknownRestaurant | UnknownUnavailability) -> HTTPException:
    return HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=str(exc))


def _deferred(exc: ChangeDeferred, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc), headers=headers)


def _invalid(where: str, field: str, message: str) -> RequestValidationError:
    # FastAPI's own 422 shape, so clients parse one kind of validation error.
    return RequestValidationError([{"type": "value_error", "loc": (where, field), "msg": message, "input": None}])


CREATED: dict[int | str, dict[str, Any]] = {
    status.HTTP_201_CREATED: {
        "description": "scheduled (or started)",
        "headers": {"Location": {"description": "the new unavailability's URL", "schema": {"type": "string"}}},
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, responses={**CREATED, **WRITE_ERRORS})
async def create_unavailability(
    restaurant_id: RestaurantId,
    body: UnavailabilityCreate,
    principal: CurrentPrincipal,
    service: UnavailabilitiesDep,
    response: Response,
) -> UnavailabilityPublic:
    """Schedule an unavailability, or start one now; overlapping ones are allowed and their union counts."""
    ensure_can_manage(principal, restaurant_id)
    try:
        record = await service.create(
            restaurant_id, reason=body.reason, start=body.start, end=body.end, note=body.note, by=principal.subject
        )
    except InvalidUnavailability as exc:
        raise _invalid("body", exc.field, exc.message) from exc
    except UnknownRestaurant as exc:
        raise _not_found(exc) from exc
    except UnavailabilityConflict as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except ChangeDeferred as exc:
        raise _deferred(exc, {"Location": f"/restaurants/{restaurant_id}/unavailabilities/{exc.uid}"}) from exc
    response.headers["Location"] = f"/restaurants/{restaurant_id}/unavailabilities/{record.id}"
    return _public(restaurant_id, record)


@router.delete("/{uid}", responses=WRITE_ERRORS)
async def cancel_unavailability(
    restaurant_id: RestaurantId, uid: str, principal: CurrentPrincipal, service: UnavailabilitiesDep
) -> UnavailabilityPublic:
    """Cancel: an ongoing one ends now, a scheduled one never happens; the history keeps it, marked cancelled."""
    ensure_can_manage(principal, restaurant_id)
    try:
        record = await service.cancel(restaurant_id, uid, by=principal.subject)
    except (UnknownRestaurant, UnknownUnavailability) as exc:
        raise _not_found(exc) from exc
    except UnavailabilityConflict as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except ChangeDeferred as exc:
        raise _deferred(exc) from exc
    return _public(restaurant_id, record)


@router.get("", responses={**AUTH_ERRORS, **NOT_FOUND})
async def list_unavailabilities(
    restaurant_id: RestaurantId,
    principal: CurrentPrincipal,
    service: UnavailabilitiesDep,
    since: Annotated[
        AwareDatetime | None,
        Query(alias="from", description="keep those whose scheduled window ends after this (ISO-8601 with offset)"),
    ] = None,
    until: Annotated[
        AwareDatetime | None,
        Query(alias="to", description="keep those whose scheduled window starts before this (ISO-8601 with offset)"),
    ] = None,
) -> UnavailabilitiesPublic:
    """The history, newest start first, cancelled ones included; `from`/`to` keep those overlapping that range."""
    ensure_can_read(principal, [restaurant_id])
    if since is not None and until is not None and until <= since:
        raise _invalid("query", "to", "must be after from")
    try:
        records = await service.history(restaurant_id, since, until)
    except UnknownRestaurant as exc:
        raise _not_found(exc) from exc
    now = utc_now()
    return UnavailabilitiesPublic(
        restaurant_id=restaurant_id,
        items=[UnavailabilityPublic.model_validate(public_view(restaurant_id, r, now)) for r in records],
    )


@router.get("/{uid}", responses={**AUTH_ERRORS, **NOT_FOUND})
async def get_unavailability(
    restaurant_id: RestaurantId, uid: str, principal: CurrentPrincipal, service: UnavailabilitiesDep
) -> UnavailabilityPublic:
    """One unavailability (where the `Location` of a new one points)."""
    ensure_can_read(principal, [restaurant_id])
    try:
        record = await service.get(restaurant_id, uid)
    except (UnknownRestaurant, UnknownUnavailability) as exc:
        raise _not_found(exc) from exc
    return _public(restaurant_id, record)
