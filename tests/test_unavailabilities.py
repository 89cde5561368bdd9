"""Unavailabilities through the API on real servers: rules, live status, history, auth, events, clock queue."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.exceptions
from fastapi import FastAPI

from api.security import Principal, create_access_token
from core import unannounced as unannounced_module
from core.clock_queue import ClockQueue
from core.documents import Restaurant, Role, UnavailabilityLog
from core.messages import DeviceState, Event, EventType, utc_now
from core.presence_store import PresenceStore, now_ms
from core.settings import Settings
from core.status import UnavailabilityReason
from core.unannounced import unannounced
from core.unavailabilities import UnavailabilityService
from tests.devices import ALWAYS_OPEN, EventTap, settle_time
from tests.helpers import wait_until

RID = "r-unav"


def iso(at: datetime) -> str:
    return at.isoformat()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        yield client


@pytest.fixture
def store(app: FastAPI, settings: Settings) -> PresenceStore:
    return PresenceStore(app.state.redis, settings.redis_prefix)


@pytest.fixture
def as_(settings: Settings) -> Any:
    """Headers of a token: `as_("r1")` for a restaurant, `as_(Role.SALES)` / `as_(Role.ADMIN)` for users."""

    def headers(who: str | Role) -> dict[str, str]:
        if isinstance(who, Role):
            principal = Principal(who.value, who)
        else:
            principal = Principal(who, Role.RESTAURANT, restaurant_id=who)
        return {"Authorization": f"Bearer {create_access_token(settings, principal)}"}

    return headers


@pytest.fixture
async def online(store: PresenceStore) -> str:
    """An always-open restaurant with one connected device: online until something says otherwise."""
    await Restaurant(restaurant_id=RID, secret_hash="-", mqtt_hash="-", hours=ALWAYS_OPEN).insert()
    event = Event(type=EventType.DEVICE_ONLINE, restaurant_id=RID, device_id="tablet")
    await store.apply_presence([(RID, "tablet", 1, DeviceState.ONLINE, event)])
    return RID


async def status_of(client: httpx.AsyncClient, as_: Any, rid: str) -> tuple[bool, str | None, str | None]:
    response = await client.get(f"/restaurants/{rid}/status", headers=as_(rid))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["online"], body["reason"], body["detail"]


async def start_one_now(client: httpx.AsyncClient, as_: Any, rid: str, reason: str) -> httpx.Response:
    """POST an unavailability of an hour starting now, as the restaurant."""
    body = {"reason": reason, "end": iso(utc_now() + timedelta(hours=1))}
    return await client.post(f"/restaurants/{rid}/unavailabilities", json=body, headers=as_(rid))


def errors_of(response: httpx.Response) -> str:
    """The 422 messages as one string, each prefixed by where it points."""
    assert response.status_code == 422, response.text
    return " | ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in response.json()["detail"])


async def test_start_now_is_unavailable_at_once_and_cancel_brings_it_back(
    client: httpx.AsyncClient, as_: Any, online: str, settings: Settings, app: FastAPI, store: PresenceStore
) -> None:
    assert await status_of(client, as_, online) == (True, None, None)
    clock = ClockQueue(app.state.redis, settings.redis_prefix)
    async with EventTap(settings) as tap:
        created = await client.post(
            f"/restaurants/{online}/unavailabilities",
            json={"reason": "LACK_OF_DELIVERY_STAFF", "end": iso(utc_now() + timedelta(hours=1)), "note": "rain"},
            headers=as_(online),
        )

        assert created.status_code == 201, created.text
        body = created.json()
        assert body["state"] == "active"
        assert (body["restaurant_id"], body["reason"], body["note"]) == (online, "LACK_OF_DELIVERY_STAFF", "rain")
        assert (body["created_by"], body["cancelled_at"], body["cancelled_by"]) == (online, None, None)
        assert created.headers["Location"] == f"/restaurants/{online}/unavailabilities/{body['id']}"
        assert (await client.get(created.headers["Location"], headers=as_(online))).json() == body
        assert await status_of(client, as_, online) == (False, "UNAVAILABLE", "LACK_OF_DELIVERY_STAFF")
        # The scheduler (another process) settles what is due and publishes the STATUS_CHANGED.
        score = await app.state.redis.zscore(clock.key, online)
        assert score is not None and score <= now_ms()

        await app.state.redis.zrem(clock.key, online)  # as if the scheduler had drained it
        cancelled = await client.delete(f"/restaurants/{online}/unavailabilities/{body['id']}", headers=as_(online))

        assert cancelled.status_code == 200, cancelled.text
        after = cancelled.json()
        assert (after["state"], after["cancelled_by"]) == ("cancelled", online)
        assert body["start"] <= after["cancelled_at"] < body["end"]
        assert await status_of(client, as_, online) == (True, None, None)
        score = await app.state.redis.zscore(clock.key, online)
        assert score is not None and score <= now_ms()

        aggregator = settings.aggregator_queue
        await wait_until(
            lambda: (
                tap.of(online, "UNAVAILABILITY_CREATED", aggregator)
                and tap.of(online, "UNAVAILABILITY_CANCELLED", aggregator)
            ),
            message="both unavailability events on the aggregator queue",
        )
        (created_event,) = tap.of(online, "UNAVAILABILITY_CREATED", aggregator)
        (cancelled_event,) = tap.of(online, "UNAVAILABILITY_CANCELLED", aggregator)
        assert created_event["data"] == body
        assert cancelled_event["data"] == after
        assert tap.of(online, "UNAVAILABILITY_CREATED")  # and on the dashboard's queue
    # Confirmed events leave the restaurant's outbox (the fixture's own birth event stays: no bridge runs).
    left = (await store.snapshot(online)).outbox.values()
    assert not [raw for raw in left if "UNAVAILABILITY" in raw]


async def test_scheduled_one_is_not_in_force_yet_and_cancelled_it_never_happens(
    client: httpx.AsyncClient, as_: Any, online: str
) -> None:
    start, end = utc_now() + timedelta(hours=1), utc_now() + timedelta(hours=3)
    created = await client.post(
        f"/restaurants/{online}/unavailabilities",
        json={"reason": "HOLIDAY", "start": iso(start), "end": iso(end)},
        headers=as_(Role.ADMIN),
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["state"], body["created_by"]) == ("scheduled", "admin")
    assert datetime.fromisoformat(body["start"]) == start.replace(microsecond=start.microsecond // 1000 * 1000)
    assert await status_of(client, as_, online) == (True, None, None)

    cancelled = await client.delete(f"/restaurants/{online}/unavailabilities/{body['id']}", headers=as_(online))

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    history = (await client.get(f"/restaurants/{online}/unavailabilities", headers=as_(online))).json()
    assert [(i["id"], i["state"]) for i in history["items"]] == [(body["id"], "cancelled")]
    assert await status_of(client, as_, online) == (True, None, None)


async def test_overlapping_ones_count_as_their_union(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    url = f"/restaurants/{online}/unavailabilities"
    first = await client.post(
        url,
        json={"reason": "OVERLOADED_OFFLINE_ORDERS", "end": iso(utc_now() + timedelta(hours=1))},
        headers=as_(online),
    )
    second = await client.post(
        url,
        json={"reason": "CONNECTION_ISSUES", "start": "now", "end": iso(utc_now() + timedelta(hours=2))},
        headers=as_(online),
    )
    assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
    assert (await status_of(client, as_, online))[:2] == (False, "UNAVAILABLE")

    await client.delete(f"{url}/{first.json()['id']}", headers=as_(online))
    assert await status_of(client, as_, online) == (False, "UNAVAILABLE", "CONNECTION_ISSUES")

    await client.delete(f"{url}/{second.json()['id']}", headers=as_(online))
    assert await status_of(client, as_, online) == (True, None, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"reason": "HOLIDAY", "start": "2030-01-01T10:00:00", "end": "2030-01-01T12:00:00Z"}, "body.start: "),
        ({"reason": "HOLIDAY", "end": "2030-01-01T12:00:00"}, "body.end: Value error, must include a time zone offset"),
        ({"reason": "HOLIDAY", "start": "-2m", "end": "+1h"}, "body.start: "),
        ({"reason": "HOLIDAY", "start": "+2h", "end": "+1h"}, "body.end: must be after start"),
        ({"reason": "HOLIDAY", "start": "+1h", "end": "+1h"}, "body.end: must be after start"),
        ({"reason": "HOLIDAY", "end": "+2200h"}, "body.end: an unavailability may last at most 90 days"),
        ({"reason": "HOLIDAY", "start": "+9000h", "end": "+9001h"}, "body.start: may be at most 366 days ahead"),
        ({"reason": "HOLIDAY", "end": "+1h", "note": "x" * 501}, "body.note: at most 500 characters, got 501"),
        ({"reason": "BORED", "end": "+1h"}, "body.reason: Input should be 'LACK_OF_DELIVERY_STAFF'"),
        ({"reason": "HOLIDAY"}, "body.end: Field required"),
        ({"reason": "HOLIDAY", "end": "+1h", "ends": "+2h"}, "body.ends: Extra inputs are not permitted"),
        ({"reason": "HOLIDAY", "end": "tomorrow"}, "body.end: Input should be a valid datetime"),
    ],
)
async def test_bad_input_is_422_saying_what_is_wrong(
    client: httpx.AsyncClient, as_: Any, online: str, body: dict[str, Any], expected: str
) -> None:
    now = utc_now()

    def resolve(value: Any) -> Any:
        """ "+2h" / "-2m": that far from now."""
        if isinstance(value, str) and value[:1] in "+-" and value[-1] in "hm":
            unit = timedelta(hours=1) if value[-1] == "h" else timedelta(minutes=1)
            return iso(now + int(value[:-1]) * unit)
        return value

    response = await client.post(
        f"/restaurants/{online}/unavailabilities", json={k: resolve(v) for k, v in body.items()}, headers=as_(online)
    )

    assert expected in errors_of(response)
    history = (await client.get(f"/restaurants/{online}/unavailabilities", headers=as_(online))).json()
    assert history["items"] == []


async def test_naive_and_past_starts_say_why(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    url = f"/restaurants/{online}/unavailabilities"
    naive = await client.post(
        url,
        json={"reason": "OTHER", "start": "2030-01-01T10:00:00", "end": "2030-01-02T10:00:00Z"},
        headers=as_(online),
    )
    assert "must include a time zone offset" in errors_of(naive)
    past = await client.post(
        url,
        json={
            "reason": "OTHER",
            "start": iso(utc_now() - timedelta(hours=1)),
            "end": iso(utc_now() + timedelta(hours=1)),
        },
        headers=as_(online),
    )
    assert "is in the past" in errors_of(past)


async def test_a_start_seconds_ago_counts_as_now(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    asked = utc_now() - timedelta(seconds=20)

    response = await client.post(
        f"/restaurants/{online}/unavailabilities",
        json={"reason": "OTHER", "start": iso(asked), "end": iso(asked + timedelta(hours=1))},
        headers=as_(online),
    )

    assert response.status_code == 201, response.text
    assert datetime.fromisoformat(response.json()["start"]) > asked
    assert response.json()["state"] == "active"


async def test_cancel_refusals(client: httpx.AsyncClient, as_: Any, online: str, app: FastAPI) -> None:
    url = f"/restaurants/{online}/unavailabilities"
    created = await client.post(
        url, json={"reason": "OTHER", "end": iso(utc_now() + timedelta(hours=1))}, headers=as_(online)
    )
    uid = created.json()["id"]
    assert (await client.delete(f"{url}/{uid}", headers=as_(online))).status_code == 200

    again = await client.delete(f"{url}/{uid}", headers=as_(online))
    assert again.status_code == 409
    assert "cancelled already" in again.json()["detail"]

    unknown = await client.delete(f"{url}/no-such-uid", headers=as_(online))
    assert unknown.status_code == 404
    assert "no-such-uid" in unknown.json()["detail"]

    # An ended one cannot be made through the API (no start in the past): schedule it an hour back.
    service: UnavailabilityService = app.state.unavailabilities
    past = utc_now() - timedelta(hours=2)
    ended = await service.create(
        online, reason=UnavailabilityReason.HOLIDAY, end=past + timedelta(hours=1), by="test", now=past
    )
    refused = await client.delete(f"{url}/{ended.id}", headers=as_(online))
    assert refused.status_code == 409
    assert "ended already" in refused.json()["detail"]
    states = {i["id"]: i["state"] for i in (await client.get(url, headers=as_(online))).json()["items"]}
    assert states == {uid: "cancelled", ended.id: "ended"}


async def test_history_is_newest_first_with_an_overlap_filter(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    url = f"/restaurants/{online}/unavailabilities"
    now = utc_now()
    ids = []
    for hours in (1, 5, 3):  # starts in an order that is not the answer's
        start = now + timedelta(hours=hours)
        response = await client.post(
            url,
            json={"reason": "HOLIDAY", "start": iso(start), "end": iso(start + timedelta(hours=1))},
            headers=as_(online),
        )
        ids.append(response.json()["id"])
    await client.delete(f"{url}/{ids[2]}", headers=as_(online))

    everything = (await client.get(url, headers=as_(Role.SALES))).json()
    assert everything["restaurant_id"] == online
    assert [(i["id"], i["state"]) for i in everything["items"]] == [
        (ids[1], "scheduled"),
        (ids[2], "cancelled"),
        (ids[0], "scheduled"),
    ]

    window = {"from": iso(now + timedelta(hours=3, minutes=30)), "to": iso(now + timedelta(hours=5, minutes=30))}
    some = (await client.get(url, params=window, headers=as_(online))).json()
    assert [i["id"] for i in some["items"]] == [ids[1], ids[2]]
    only_from = (await client.get(url, params={"from": window["from"]}, headers=as_(online))).json()
    assert [i["id"] for i in only_from["items"]] == [ids[1], ids[2]]

    backwards = await client.get(url, params={"from": window["to"], "to": window["from"]}, headers=as_(online))
    assert "query.to: must be after from" in errors_of(backwards)
    naive = await client.get(url, params={"from": "2030-01-01T00:00:00"}, headers=as_(online))
    assert "must include a time zone offset" in errors_of(naive)


async def test_who_may_do_what(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    await Restaurant(restaurant_id="r-other", secret_hash="-", mqtt_hash="-").insert()
    url = f"/restaurants/{online}/unavailabilities"
    body = {"reason": "OTHER", "end": iso(utc_now() + timedelta(hours=1))}

    sales = await client.post(url, json=body, headers=as_(Role.SALES))
    assert sales.status_code == 403
    assert sales.json()["detail"] == "role sales may only read unavailabilities"
    other = await client.post(url, json=body, headers=as_("r-other"))
    assert other.status_code == 403
    assert (await client.get(url, headers=as_("r-other"))).status_code == 403
    assert (await client.post(url, json=body)).status_code == 401

    mine = await client.post(url, json=body, headers=as_(online))
    assert mine.status_code == 201
    uid = mine.json()["id"]
    assert (await client.delete(f"{url}/{uid}", headers=as_(Role.SALES))).status_code == 403
    assert (await client.delete(f"{url}/{uid}", headers=as_("r-other"))).status_code == 403
    assert (await client.get(f"{url}/{uid}", headers=as_("r-other"))).status_code == 403
    assert (await client.get(url, headers=as_(Role.SALES))).status_code == 200
    assert (await client.delete(f"{url}/{uid}", headers=as_(Role.ADMIN))).json()["cancelled_by"] == "admin"


async def test_unknown_and_malformed_restaurants(client: httpx.AsyncClient, as_: Any) -> None:
    url = "/restaurants/r-nobody/unavailabilities"
    body = {"reason": "OTHER", "end": iso(utc_now() + timedelta(hours=1))}
    for response in (
        await client.post(url, json=body, headers=as_(Role.ADMIN)),
        await client.get(url, headers=as_(Role.ADMIN)),
        await client.delete(f"{url}/abc", headers=as_(Role.ADMIN)),
        await client.get(f"{url}/abc", headers=as_(Role.SALES)),
    ):
        assert response.status_code == 404, response.text
        assert "unknown restaurant 'r-nobody'" in response.json()["detail"]
    bad = await client.get("/restaurants/bad$id/unavailabilities", headers=as_(Role.ADMIN))
    assert "path.restaurant_id" in errors_of(bad)


async def test_too_many_pending_is_409(client: httpx.AsyncClient, as_: Any, online: str, app: FastAPI) -> None:
    service: UnavailabilityService = app.state.unavailabilities
    service.limits = dataclasses.replace(service.limits, max_pending=2)
    url = f"/restaurants/{online}/unavailabilities"
    body = {"reason": "OTHER", "start": iso(utc_now() + timedelta(hours=1)), "end": iso(utc_now() + timedelta(hours=2))}
    first = await client.post(url, json=body, headers=as_(online))
    assert (await client.post(url, json=body, headers=as_(online))).status_code == 201

    third = await client.post(url, json=body, headers=as_(online))
    assert third.status_code == 409
    assert "already has 2 scheduled or ongoing" in third.json()["detail"]

    await client.delete(f"{url}/{first.json()['id']}", headers=as_(online))
    assert (await client.post(url, json=body, headers=as_(online))).status_code == 201


async def test_concurrent_writers_lose_nothing(client: httpx.AsyncClient, as_: Any, online: str) -> None:
    url = f"/restaurants/{online}/unavailabilities"
    start = utc_now() + timedelta(hours=1)
    bodies = [
        {"reason": "OTHER", "start": iso(start + timedelta(minutes=i)), "end": iso(start + timedelta(hours=1))}
        for i in range(8)
    ]

    responses = await asyncio.gather(*(client.post(url, json=b, headers=as_(online)) for b in bodies))

    assert [r.status_code for r in responses] == [201] * 8
    history = (await client.get(url, headers=as_(online))).json()["items"]
    assert sorted(i["id"] for i in history) == sorted(r.json()["id"] for r in responses)


async def test_openapi_documents_the_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    collection = paths["/restaurants/{restaurant_id}/unavailabilities"]
    assert set(collection["post"]["responses"]) >= {"201", "401", "403", "404", "409", "422"}
    assert collection["post"]["tags"] == ["unavailabilities"]
    assert {p["name"] for p in collection["get"]["parameters"]} >= {"from", "to"}
    assert set(paths["/restaurants/{restaurant_id}/unavailabilities/{uid}"]) == {"get", "delete"}


async def test_with_rabbitmq_away_the_change_stands_and_the_event_waits_in_the_outbox(
    client: httpx.AsyncClient, as_: Any, online: str, app: FastAPI, store: PresenceStore
) -> None:
    await app.state.events.close()  # what the API sees of a RabbitMQ that went away

    response = await client.post(
        f"/restaurants/{online}/unavailabilities",
        json={"reason": "OTHER", "end": iso(utc_now() + timedelta(hours=1))},
        headers=as_(online),
    )

    assert response.status_code == 201, response.text
    assert (await status_of(client, as_, online))[:2] == (False, "UNAVAILABLE")
    waiting = [Event.model_validate_json(raw) for raw in (await store.snapshot(online)).outbox.values()]
    assert [e.data["id"] for e in waiting if e.type is EventType.UNAVAILABILITY_CREATED] == [response.json()["id"]]


async def test_a_change_committed_as_redis_goes_away_takes_effect_and_is_announced_when_it_answers(
    client: httpx.AsyncClient, as_: Any, online: str, settings: Settings, app: FastAPI, store: PresenceStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Redis answers the lock, then goes away before the profile is copied: the change is in MongoDB only.
    redis_away = True
    real_refresh = unannounced_module.refresh_profile

    async def refresh(*args: Any) -> Any:
        if redis_away:
            raise redis.exceptions.ConnectionError("Connection refused (as in a restart)")
        return await real_refresh(*args)

    monkeypatch.setattr(unannounced_module, "refresh_profile", refresh)
    async with EventTap(settings) as tap:
        response = await start_one_now(client, as_, online, "HOLIDAY")

        assert response.status_code == 503, response.text
        assert "is recorded" in response.json()["detail"] and "do not repeat" in response.json()["detail"]
        uid = response.headers["Location"].rsplit("/", 1)[1]
        log = await UnavailabilityLog.get(online)
        assert log is not None and [item.id for item in log.items] == [uid]
        [waiting] = log.unannounced  # committed with the change, in the same document
        assert Event.model_validate_json(waiting.event).type is EventType.UNAVAILABILITY_CREATED
        await settle_time(0.3)
        assert not tap.of(online, "UNAVAILABILITY_CREATED")
        assert await app.state.redis.zscore(ClockQueue(app.state.redis, settings.redis_prefix).key, online) is None

        redis_away = False  # the service retries in the background

        await wait_until(lambda: tap.of(online, "UNAVAILABILITY_CREATED"), 20, message="the event, once Redis is back")
    assert await status_of(client, as_, online) == (False, "UNAVAILABLE", "HOLIDAY")
    [event] = tap.of(online, "UNAVAILABILITY_CREATED")
    assert event["event_id"] == Event.model_validate_json(waiting.event).event_id
    assert event["data"]["id"] == uid
    log = await UnavailabilityLog.get(online)
    assert log is not None and log.unannounced == []
    left = (await store.snapshot(online)).outbox.values()
    assert not [raw for raw in left if "UNAVAILABILITY" in raw]
    score = await app.state.redis.zscore(ClockQueue(app.state.redis, settings.redis_prefix).key, online)
    assert score is not None and score <= now_ms()  # marked due: the scheduler settles it at once


async def test_events_a_failed_request_left_in_mongodb_go_out_with_the_next_change(
    client: httpx.AsyncClient, as_: Any, online: str, settings: Settings
) -> None:
    # An API that died between the commit and the Redis step left its event in the log.
    left = Event(type=EventType.UNAVAILABILITY_CANCELLED, restaurant_id=online, data={"note": "left behind"})
    await UnavailabilityLog(id=online, items=[], version=1, unannounced=[unannounced(left)]).insert()
    async with EventTap(settings) as tap:
        response = await start_one_now(client, as_, online, "OTHER")
        assert response.status_code == 201, response.text

        await wait_until(lambda: tap.of(online, "UNAVAILABILITY_CREATED"), 20, message="the new change's event")
    assert [e["event_id"] for e in tap.of(online, "UNAVAILABILITY_CANCELLED")] == [left.event_id]
    assert [e["type"] for e in tap.of(online) if e["type"].startswith("UNAVAILABILITY")] == [
        "UNAVAILABILITY_CANCELLED", "UNAVAILABILITY_CREATED"
    ]  # in commit order
    log = await UnavailabilityLog.get(online)
    assert log is not None and log.unannounced == []
