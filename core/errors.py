"""The platform's one small error hierarchy; library errors are converted where they enter."""


class PresenceError(Exception):
    """Base of every error the platform raises on purpose."""


class InvalidMessage(PresenceError):
    """An MQTT topic or payload that does not follow the device protocol (DESIGN.md §3)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class UnknownRestaurant(PresenceError):
    """A restaurant id that was never provisioned."""

    def __init__(self, restaurant_id: str) -> None:
        super().__init__(f"unknown restaurant {restaurant_id!r}")
        self.restaurant_id = restaurant_id


class ServiceUnavailable(PresenceError):
    """A backing service (Redis, RabbitMQ, MongoDB, a broker) cannot be reached."""


class ConfigError(PresenceError):
    """Settings that cannot work, found at start-up rather than at the first request."""
