"""Request and response bodies of the unavailability and restaurant-profile endpoints."""

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from api.models import Name, TimeZone
from core.hours import DayHours, OpeningHours
from core.status import UnavailabilityReason
from core.unavailabilities import UnavailabilityState


def _aware(value: datetime) -> datetime:
    if value.utcoffset() is None:
        raise ValueError("must include a time zone offset, e.g. 2030-01-01T10:00:00Z or 2030-01-01T07:00:00-03:00")
    return value


# Naive datetimes are refused rather than guessed: "10:00" means a different instant in every zone.
AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class UnavailabilityCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: UnavailabilityReason
    start: Annotated[
        AwareDatetime | None,
        WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"}, {"const": "now"}, {"type": "null"}]}),
    ] = Field(
        default=None,
        description='ISO-8601 with offset, or "now"; omitted = now. At most a minute in the past (then it is now).',
        examples=["now", "2030-01-01T10:00:00-03:00"],
    )
    end: AwareDatetime = Field(description="ISO-8601 with offset, after start", examples=["2030-01-01T12:00:00-03:00"])
    note: str = Field(default="", description="free text for the history (500 characters by default)")

    @field_validator("start", mode="before")
    @classmethod
    def _now(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "now" else value


class UnavailabilityPublic(BaseModel):
    id: str
    restaurant_id: str
    reason: UnavailabilityReason
    start: datetime
    end: datetime = Field(description="as scheduled; a cancelled one really ended at cancelled_at if that is earlier")
    note: str
    created_at: datetime
    created_by: str = Field(description="restaurant id or user name")
    cancelled_at: datetime | None
    cancelled_by: str | None
    state: UnavailabilityState = Field(description="at the time of the response")


class UnavailabilitiesPublic(BaseModel):
    restaurant_id: str
    items: list[UnavailabilityPublic] = Field(description="newest start first, cancelled ones included")


class RestaurantProfile(BaseModel):
    restaurant_id: str
    group: str
    timezone: str
    hours: OpeningHours


class OpeningHoursUpdate(BaseModel):
    """Days to change: a window, or null for closed; days left out keep their hours."""

    model_config = ConfigDict(extra="forbid")

    mon: DayHours | None = None
    tue: DayHours | None = None
    wed: DayHours | None = None
    thu: DayHours | None = None
    fri: DayHours | None = None
    sat: DayHours | None = None
    sun: DayHours | None = None

    def changes(self) -> dict[str, DayHours | None]:
        return {day: getattr(self, day) for day in self.model_fields_set}


class RestaurantUpdate(BaseModel):
    """Any of group, timezone, hours; what is left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    group: Name | None = None
    timezone: TimeZone | None = Field(default=None, description="IANA zone", examples=["America/Sao_Paulo"])
    hours: OpeningHoursUpdate | None = None

    @model_validator(mode="after")
    def _something(self) -> "RestaurantUpdate":
        if not self.model_fields_set:
            raise ValueError("nothing to change: give group, timezone or hours")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null; leave it out to keep it")
        return self
