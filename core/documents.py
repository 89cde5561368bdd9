"""Beanie documents for restaurants and users; portable to FerretDB 1.24 and MongoDB 7."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from beanie import Document, Indexed
from pydantic import BaseModel, Field, model_validator

from core.hours import OpeningHours
from core.messages import utc_now
from core.status import Unavailability, UnavailabilityReason


class Role(StrEnum):
    RESTAURANT = "restaurant"
    SALES = "sales"
    ADMIN = "admin"


def _with_id(data: Any, field: str) -> Any:
    """`_id` is the natural key: FerretDB's SQLite backend uses an index only for `_id` filters."""
    if isinstance(data, dict) and "_id" not in data and "id" not in data and field in data:
        return {**data, "id": data[field]}
    return data


class Restaurant(Document):
    id: str  # type: ignore[assignment]  # the restaurant id
    restaurant_id: Annotated[str, Indexed(unique=True)]
    secret_hash: str
    mqtt_hash: str
    group: str = "A"
    timezone: str = "America/Sao_Paulo"
    hours: OpeningHours = Field(default_factory=OpeningHours)
    created_at: datetime = Field(default_factory=utc_now)

    @model_validator(mode="before")
    @classmethod
    def _fill_id(cls, data: Any) -> Any:
        return _with_id(data, "restaurant_id")

    class Settings:
        name = "restaurants"


class User(Document):
    id: str  # type: ignore[assignment]  # the user name
    username: Annotated[str, Indexed(unique=True)]
    password_hash: str
    role: Role
    created_at: datetime = Field(default_factory=utc_now)

    @model_validator(mode="before")
    @classmethod
    def _fill_id(cls, data: Any) -> Any:
        return _with_id(data, "username")

    class Settings:
        name = "users"


class UnavailabilityRecord(BaseModel):
    """One scheduled unavailability as kept in the history; cancelling sets `cancelled_at`, never deletes."""

    id: str  # a uuid4 hex, the `{uid}` of the API
    reason: UnavailabilityReason
    start: datetime
    end: datetime
    note: str = ""
    created_at: datetime = Field(default_factory=utc_now)
    created_by: str = ""  # the principal's subject: a restaurant id or a user name
    cancelled_at: datetime | None = None
    cancelled_by: str | None = None

    def as_rule(self) -> Unavailability:
        return Unavailability(start=self.start, end=self.end, reason=self.reason, cancelled_at=self.cancelled_at)


class Unannounced(BaseModel):
    """An event committed with its change and not yet in Redis's outbox (core/unannounced.py)."""

    field: str  # its field in the Redis outbox: commit time first, so recovery keeps the order
    event: str  # the Event as JSON


class UnavailabilityLog(Document):
    """All unavailabilities of one restaurant in one document keyed by the restaurant id.

    One document per restaurant rather than one per unavailability: FerretDB's SQLite backend uses an
    index only for `_id`, so a restaurant's history is one point lookup instead of a collection scan.
    Writers use optimistic concurrency on `version` (FerretDB 1.24 has no transactions).
    """

    id: str  # type: ignore[assignment]  # the restaurant id
    items: list[UnavailabilityRecord] = Field(default_factory=list)
    version: int = 0
    unannounced: list[Unannounced] = Field(default_factory=list)

    class Settings:
        name = "unavailabilities"


DOCUMENT_MODELS: list[type[Document]] = [Restaurant, User, UnavailabilityLog]
