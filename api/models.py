"""Request and response bodies of the HTTP API (what /openapi.json documents)."""

from datetime import date
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from core.documents import Role
from core.hours import OpeningHours, zone
from core.ids import ID_PATTERN, is_valid_id
from core.status import DerivedStatus


def _check_id(value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(f"must be 1-64 characters of A-Z a-z 0-9 _ - ({ID_PATTERN})")
    return value


def _check_zone(value: str) -> str:
    zone(value)  # raises ValueError naming the zone
    return value


# Days the history endpoints accept. Python's calendar ends at years 1 and 9999; a query at its edge
# (a default range of a day, a local day in a +14:00 zone) would overflow into a 500.
FIRST_DAY, LAST_DAY = date(1900, 1, 1), date(9998, 12, 31)
CALENDAR_MESSAGE = f"must be between {FIRST_DAY} and {LAST_DAY}"


def in_calendar(day: date) -> bool:
    return FIRST_DAY <= day <= LAST_DAY


# Restaurant ids, groups and user names share one alphabet (they appear in MQTT topics and logins).
RestaurantId = Annotated[str, AfterValidator(_check_id)]
Name = Annotated[str, AfterValidator(_check_id)]
TimeZone = Annotated[str, AfterValidator(_check_zone)]


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds until the token expires")


class StatusQuery(BaseModel):
    ids: list[str] = Field(
        description="restaurant ids; duplicates are collapsed; at most `max_status_ids` (10,000 by default)",
        examples=[["demo-0001", "demo-0002"]],
    )


class StatusBatch(BaseModel):
    statuses: list[DerivedStatus] = Field(description="statuses of the known ids, in the order asked")
    unknown: list[str] = Field(description="ids asked for that no restaurant has")


class RestaurantCreate(BaseModel):
    restaurant_id: RestaurantId
    group: Name = "A"
    timezone: TimeZone | None = Field(default=None, description="IANA zone; the platform default when omitted")
    hours: OpeningHours | None = Field(default=None, description="per weekday; 10:00-23:00 every day when omitted")


class RestaurantCreated(BaseModel):
    restaurant_id: str
    group: str
    timezone: str
    secret: str = Field(description="shown once: the restaurant's MQTT password and API login secret")


class UserCreate(BaseModel):
    username: Name
    password: Annotated[str, Field(min_length=8, max_length=256)]
    role: Literal[Role.SALES, Role.ADMIN]


class UserPublic(BaseModel):
    username: str
    role: Role


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="`ok` or what failed, per backing service")
