"""Reading and changing a restaurant's profile through the API; the live status follows at once."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.security import Principal, create_access_token
from core.clock_queue import ClockQueue
from core.documents import Restaurant, Role, UnavailabilityLog
from core.hours import WEEKDAYS, zone
from core.messages import DeviceState, Event, EventType, utc_now
from core.presence_store import PresenceStore, now_ms
from core.profiles import restaurant_profile
from core.settings import Settings
from tests.devices import ALWAYS_OPEN

RID = "r-prof"
ALL_DAY = {"open": "00:00", "close": "00:00"}


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        yield client


@pytest.fixture
def store(app: FastAPI, settings: Settings) -> PresenceStore:
    return PresenceStore(app.state.redis, settings.redis_prefix)


@pytest.fixture
def as_(settings: Settings) -> Any:
    def headers(who: str | Role) -> dict[str, str]:
        if isinstance(who, Role):
            principal = Principal(who.value, who)
        else:
            principal = Principal(who, Role.RESTAURANT, restaurant_id=who)
        return {"Authorization": f"Bearer {create_access_token(settings, principal)}"}

    return headers


@pytest.fixture
async def online(store: PresenceStore) -> str:
    """An always-open restaurant in group A with one connected device."""
    await Restaurant(restaurant_id=RID, secret_hash="-", mqtt_hash="-", hours=ALWAYS_OPEN).insert()
    event = Event(type=EventType.DEVICE_ONLINE, restaurant_id=RID, device_id="tablet")
    await store.apply_presence([(RID, "tablet", 1, DeviceState.ONLINE, event)])
    return RID


def errors_of(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in response.json()["detail"])


async def test_profile_is_read_by_itself_sales_and_admin(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    await Restaurant(restaurant_id="r-other", secret_hash="-", mqtt_hash="-").insert()
    for who in (online, Role.SALES, Role.ADMIN):
        response = await client.get(f"/restaurants/{online}", headers=as_(who))
        assert response.status_code == 200, response.text
        assert response.json() == {
            "restaurant_id": online,
            "group": "A",
            "timezone": "America/Sao_Paulo",
            "hours": dict.fromkeys(WEEKDAYS, ALL_DAY),
        }
    assert (await client.get(f"/restaurants/{online}", headers=as_("r-other"))).status_code == 403
    assert (await client.get(f"/restaurants/{online}")).status_code == 401
    missing = await client.get("/restaurants/r-nobody", headers=as_(Role.SALES))
    assert missing.status_code == 404
    assert missing.json()["detail"] == "unknown restaurant 'r-nobody'"


async def test_closing_today_makes_it_closed_at_once(
    client: httpx.AsyncClient, as_: Any, online: str, app: FastAPI, settings: Settings
) -> None:
    status_url = f"/restaurants/{online}/status"
    assert (await client.get(status_url, headers=as_(online))).json()["online"] is True
    today = utc_now().astimezone(zone("America/Sao_Paulo")).weekday()
    # Tomorrow too, so that a local midnight between these lines cannot reopen it.
    closed = {WEEKDAYS[today]: None, WEEKDAYS[(today + 1) % 7]: None}

    response = await client.patch(f"/restaurants/{online}", json={"hours": closed}, headers=as_(Role.ADMIN))

    assert response.status_code == 200, response.text
    hours = response.json()["hours"]
    assert hours == {day: None if day in closed else ALL_DAY for day in WEEKDAYS}
    status = (await client.get(status_url, headers=as_(online))).json()
    assert (status["online"], status["reason"]) == (False, "CLOSED")
    score = await app.state.redis.zscore(ClockQueue(app.state.redis, settings.redis_prefix).key, online)
    assert score is not None and score <= now_ms()

    reopened = await client.patch(
        f"/restaurants/{online}", json={"hours": dict.fromkeys(closed, ALL_DAY)}, headers=as_(Role.ADMIN)
    )
    assert reopened.json()["hours"] == dict.fromkeys(WEEKDAYS, ALL_DAY)
    assert (await client.get(status_url, headers=as_(online))).json()["online"] is True


async def test_group_zone_and_one_day_change_only_what_is_given(
    client: httpx.AsyncClient, as_: Any, online: str, store: PresenceStore
) -> None:
    url = f"/restaurants/{online}"
    monday = {"open": "09:00", "close": "17:30"}

    response = await client.patch(
        url, json={"group": "B", "timezone": "Europe/Lisbon", "hours": {"mon": monday}}, headers=as_(Role.ADMIN)
    )

    assert response.status_code == 200, response.text
    expected = {
        "restaurant_id": online,
        "group": "B",
        "timezone": "Europe/Lisbon",
        "hours": {**dict.fromkeys(WEEKDAYS, ALL_DAY), "mon": monday},
    }
    assert response.json() == expected
    assert (await client.get(url, headers=as_(online))).json() == expected
    snap = await store.snapshot(online)
    assert snap.group == "B"
    assert snap.rules is not None and snap.rules.timezone == "Europe/Lisbon"
    doc = await Restaurant.get(online)
    assert doc is not None and doc.secret_hash == "-"  # the rest of the document is untouched

    only_group = await client.patch(url, json={"group": "C"}, headers=as_(Role.ADMIN))
    assert only_group.json() == {**expected, "group": "C"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "nothing to change"),
        ({"timezone": "Mars/Olympus"}, "body.timezone: Value error, unknown time zone 'Mars/Olympus'"),
        ({"group": "a b"}, "body.group: Value error, must be 1-64 characters"),
        ({"group": None}, "group may not be null"),
        ({"hours": {"monday": None}}, "body.hours.monday: Extra inputs are not permitted"),
        ({"hours": {"mon": {"open": "25:00", "close": "10:00"}}}, "body.hours.mon.open: String should match pattern"),
        ({"hours": {"mon": {"open": "10:00"}}}, "body.hours.mon.close: Field required"),
        ({"hours": "always"}, "body.hours: Input should be a valid dictionary"),
        ({"colour": "red"}, "body.colour: Extra inputs are not permitted"),
    ],
)
async def test_bad_changes_are_422_saying_what_is_wrong(
    client: httpx.AsyncClient, as_: Any, online: str, body: dict[str, Any], expected: str
) -> None:
    response = await client.patch(f"/restaurants/{online}", json=body, headers=as_(Role.ADMIN))

    assert expected in errors_of(response)
    assert (await client.get(f"/restaurants/{online}", headers=as_(online))).json()["group"] == "A"


async def test_only_admin_changes_and_unknown_is_404(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    for who in (online, Role.SALES):
        response = await client.patch(f"/restaurants/{online}", json={"group": "B"}, headers=as_(who))
        assert response.status_code == 403
        assert response.json()["detail"] == "requires role admin"
    missing = await client.patch("/restaurants/r-nobody", json={"group": "B"}, headers=as_(Role.ADMIN))
    assert missing.status_code == 404
    assert missing.json()["detail"] == "unknown restaurant 'r-nobody'"
    # /restaurants/status stays the status batch, not a restaurant called "status".
    batch = await client.get("/restaurants/status", params={"ids": online}, headers=as_(Role.SALES))
    assert batch.status_code == 200, batch.text


async def test_concurrent_profile_and_unavailability_writers_leave_redis_equal_to_mongodb(
    client: httpx.AsyncClient, as_: Any, online: str, store: PresenceStore
) -> None:
    end = (utc_now() + timedelta(hours=1)).isoformat()
    writes = [
        *(client.patch(f"/restaurants/{online}", json={"group": g}, headers=as_(Role.ADMIN)) for g in "BCDE"),
        *(
            client.post(
                f"/restaurants/{online}/unavailabilities", json={"reason": "OTHER", "end": end}, headers=as_(online)
            )
            for _ in range(4)
        ),
    ]

    responses = await asyncio.gather(*writes)

    assert sorted(r.status_code for r in responses) == [200] * 4 + [201] * 4
    doc, log = await Restaurant.get(online), await UnavailabilityLog.get(online)
    assert doc is not None and log is not None and len(log.items) == 4
    snap = await store.snapshot(online)
    raw = await store.redis.hget(store.key(online), "p")
    assert raw == restaurant_profile(doc, log)
    assert snap.group == doc.group
