"""Reading the restaurants' credentials that provisioning writes (`var/demo-credentials.json`)."""

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from core.ids import is_valid_id


@dataclass(frozen=True, slots=True)
class RestaurantCredential:
    restaurant_id: str
    secret: str
    group: str | None = None


def parse_credentials(document: object) -> list[RestaurantCredential]:
    if not isinstance(document, dict) or not isinstance(document.get("restaurants"), list):
        raise ConfigError('credentials must be a JSON object with a "restaurants" list')
    restaurants = []
    for index, entry in enumerate(document["restaurants"]):
        if not isinstance(entry, dict):
            raise ConfigError(f"restaurants[{index}] is not an object")
        rid, secret = entry.get("restaurant_id"), entry.get("secret")
        if not isinstance(rid, str) or not is_valid_id(rid):
            raise ConfigError(f"restaurants[{index}].restaurant_id {rid!r} is not a valid id")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"restaurants[{index}] ({rid}) has no secret")
        group = entry.get("group")
        restaurants.append(RestaurantCredential(rid, secret, group if isinstance(group, str) else None))
    return restaurants


def load_credentials(path: Path, count: int | None = None, skip: int = 0) -> list[RestaurantCredential]:
    """The restaurants of the file, from the `skip`-th, at most `count` of them."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"credentials file {path} not found (run provisioning or `make run` first)") from exc
    except ValueError as exc:
        raise ConfigError(f"credentials file {path} is not JSON: {exc}") from exc
    restaurants = parse_credentials(document)[skip:]
    if count is not None:
        if count > len(restaurants):
            raise ConfigError(f"{count} restaurants asked, {path} has {len(restaurants)} after skipping {skip}")
        restaurants = restaurants[:count]
    return restaurants
