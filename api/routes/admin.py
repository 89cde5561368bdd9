"""Provisioning for role admin: restaurants (their secret is shown once) and sales/admin logins."""

from typing import Any

from fastapi import APIRouter, HTTPException, status

from api.deps import AUTH_ERRORS, AdminPrincipal, SettingsDep
from api.models import RestaurantCreate, RestaurantCreated, UserCreate, UserPublic
from core.documents import Role
from core.provisioning import ProvisioningError, RestaurantSpec, provision_restaurants, provision_user

router = APIRouter(prefix="/admin", tags=["admin"])

ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    # The body was validated already, so what provisioning refuses is a clash with what exists.
    status.HTTP_409_CONFLICT: {"description": "the name is taken"},
}


@router.post("/restaurants", status_code=status.HTTP_201_CREATED, responses=ERRORS)
async def create_restaurant(body: RestaurantCreate, settings: SettingsDep, admin: AdminPrincipal) -> RestaurantCreated:
    """A new restaurant and its secret (its MQTT password and API login); the secret is shown only here."""
    spec = RestaurantSpec(restaurant_id=body.restaurant_id, group=body.group, timezone=body.timezone, hours=body.hours)
    try:
        (created,) = await provision_restaurants(settings, [spec])
    except ProvisioningError as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return RestaurantCreated(
        restaurant_id=created["restaurant_id"],
        group=created["group"],
        timezone=body.timezone or settings.default_timezone,
        secret=created["secret"],
    )


@router.post("/users", status_code=status.HTTP_201_CREATED, responses=ERRORS)
async def create_user(body: UserCreate, settings: SettingsDep, admin: AdminPrincipal) -> UserPublic:
    """A sales or admin login with the given password."""
    try:
        created = await provision_user(settings, body.username, body.password, body.role)
    except ProvisioningError as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return UserPublic(username=created["username"], role=Role(created["role"]))
