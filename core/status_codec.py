"""The restaurant profile as mirrored into Redis: what the status function needs besides devices."""

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from core.hours import OpeningHours
from core.status import RestaurantRules, Unavailability, UnavailabilityReason


def profile_json(
    group: str, timezone: str, hours: OpeningHours, unavailabilities: Iterable[Unavailability] = ()
) -> str:
    return json.dumps(
        {
            "group": group,
            "timezone": timezone,
            "hours": hours.model_dump(mode="json"),
            "unavailabilities": [
                {
                    "start": u.start.isoformat(),
                    "end": u.end.isoformat(),
                    "reason": u.reason.value,
                    "cancelled_at": u.cancelled_at.isoformat() if u.cancelled_at else None,
                }
                for u in unavailabilities
            ],
        },
        separators=(",", ":"),
    )


def rules_from_json(profile: dict[str, Any]) -> RestaurantRules:
    return RestaurantRules(
        hours=OpeningHours.model_validate(profile.get("hours") or {}),
        timezone=profile.get("timezone") or "America/Sao_Paulo",
        unavailabilities=tuple(
            Unavailability(
                start=datetime.fromisoformat(u["start"]),
                end=datetime.fromisoformat(u["end"]),
                reason=UnavailabilityReason(u["reason"]),
                cancelled_at=datetime.fromisoformat(u["cancelled_at"]) if u.get("cancelled_at") else None,
            )
            for u in profile.get("unavailabilities") or ()
        ),
    )
