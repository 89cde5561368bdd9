"""Beanie documents for restaurants and users; portable to FerretDB 1.24 and MongoDB 7."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from beanie import Document, Indexed
from pydantic import Field, model_validator

from core.hours import OpeningHours
from core.messages import utc_now


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


DOCUMENT_MODELS: list[type[Document]] = [Restaurant, User]
