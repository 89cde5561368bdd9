"""A restaurant's profile: group, time zone and opening hours (read: itself, sales, admin; change: admin)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError

from api.deps import AUTH_ERRORS, AdminPrincipal, CurrentPrincipal, ensure_can_read
from api.models import RestaurantId
from api.unavailability_models import RestaurantProfile, RestaurantUpdate
from core.documents import Restaurant
from core.errors import UnknownRestaurant
from core.restaurant_admin import InvalidProfile, RestaurantAdmin

router = APIRouter(prefix="/restaurants", tags=["restaurants"])

ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    status.HTTP_404_NOT_FOUND: {"description": "no such restaurant"},
}


async def get_restaurant_admin(request: Request) -> RestaurantAdmin:
    admin: RestaurantAdmin = request.app.state.restaurant_admin
    return admin


RestaurantAdminDep = Annotated[RestaurantAdmin, Depends(get_restaurant_admin)]


def _profile(doc: Restaurant) -> RestaurantProfile:
    return RestaurantProfile(restaurant_id=doc.restaurant_id, group=doc.group, timezone=doc.timezone, hours=doc.hours)


@router.get("/{restaurant_id}", responses=ERRORS)
async def get_restaurant(
    restaurant_id: RestaurantId, principal: CurrentPrincipal, admin: RestaurantAdminDep
) -> RestaurantProfile:
    """The restaurant's group, time zone and opening hours; a restaurant token may read only its own."""
    ensure_can_read(principal, [restaurant_id])
    try:
        return _profile(await admin.get(restaurant_id))
    except UnknownRestaurant as exc:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


@router.patch("/{restaurant_id}", responses=ERRORS)
async def update_restaurant(
    restaurant_id: RestaurantId, body: RestaurantUpdate, principal: AdminPrincipal, admin: RestaurantAdminDep
) -> RestaurantProfile:
    """Change any of group, time zone and hours (days left out keep theirs); the live status follows at once,
    and a new group moves the restaurant's tile on the dashboards at once."""
    try:
        doc = await admin.change(
            restaurant_id,
            group=body.group,
            timezone=body.timezone,
            hours=body.hours.changes() if body.hours is not None else None,
        )
    except InvalidProfile as exc:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", exc.field), "msg": exc.message, "input": None}]
        ) from exc
    except UnknownRestaurant as exc:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    return _profile(doc)
