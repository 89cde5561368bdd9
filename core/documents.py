"""Beanie documents for restaurants and users; portable to FerretDB 1.24 and MongoDB 7."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from beanie import Document, Indexed
from pydantic import Field

from core.hours import OpeningHours
from core.messages import utc_now


class Role(StrEnum):
    RESTAURANT = "restaurant"
    SALES = "sales"
    ADMIN = "admin"


class Restaurant(Document):
    restaurant_id: Annotated[str, Indexed(unique=True)]
    secret_hash: str
    mqtt_hash: str
    group: str = "A"
    timezone: str = "America/Sao_Paulo"
    hours: OpeningHours = Field(default_factory=OpeningHours)
    created_at: datetime = Field(default_factory=utc_now)

    class Settings:
        name = "restaurants"


class User(Document):
    username: Annotated[str, Indexed(unique=True)]
    password_hash: str
    role: Role
    created_at: datetime = Field(default_factory=utc_now)

    class Settings:
        name = "users"


DOCUMENT_MODELS: list[type[Document]] = [Restaurant, User]
