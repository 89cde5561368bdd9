"""Status endpoints over real Redis facts, plus /healthz, /readyz, /metrics and the OpenAPI document."""

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from api.main import create_app
from api.models import StatusBatch
from api.security import Principal, create_access_token
from core.documents import Restaurant, Role
from core.hours import OpeningHours
from core.messages import DeviceState, Event, EventType
from core.presence_store import PresenceStore
from core.settings import Settings
from core.status import DerivedStatus
from core.status_service import StatusService
from stack.services import Redis as RedisServer
from stack.services import free_port
from tests.devices import ALWAYS_CLOSED, ALWAYS_OPEN


@pytest.fixture
async def client(app: FastAPI, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client holding a sales token: status tests are about statuses, test_api_auth about tokens."""
    token = create_access_token(settings, Principal("sales", Role.SALES))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


@pytest.fixture
def store(app: FastAPI, settings: Settings) -> PresenceStore:
    return PresenceStore(app.state.redis, settings.redis_prefix)


async def add_restaurant(restaurant_id: str, hours: OpeningHours = ALWAYS_OPEN) -> None:
    # The hash is never checked by these tests: logins are test_api_auth's subject.
    await Restaurant(restaurant_id=restaurant_id, secret_hash="-", mqtt_hash="-", hours=hours).insert()


async def birth(store: PresenceStore, restaurant_id: str, device_id: str = "tablet", epoch: int = 1) -> None:
    event = Event(type=EventType.DEVICE_ONLINE, restaurant_id=restaurant_id, device_id=device_id)
    await store.apply_presence([(restaurant_id, device_id, epoch, DeviceState.ONLINE, event)])


async def will(store: PresenceStore, restaurant_id: str, device_id: str = "tablet", epoch: int = 1) -> None:
    event = Event(
        type=EventType.DEVICE_OFFLINE, restaurant_id=restaurant_id, device_id=device_id, data={"cause": "will"}
    )
    await store.apply_presence([(restaurant_id, device_id, epoch, DeviceState.OFFLINE, event)])


async def test_birth_inside_opening_hours_is_online(client: httpx.AsyncClient, store: PresenceStore) -> None:
    await add_restaurant("r-on")
    await birth(store, "r-on")

    response = await client.get("/restaurants/r-on/status")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["restaurant_id"] == "r-on"
    assert (body["online"], body["reason"], body["devices_connected"]) == (True, None, 1)
    assert body["last_seen"] is not None


async def test_will_makes_it_disconnected(client: httpx.AsyncClient, store: PresenceStore) -> None:
    await add_restaurant("r-will")
    await birth(store, "r-will")
    await will(store, "r-will")

    body = (await client.get("/restaurants/r-will/status")).json()

    assert (body["online"], body["reason"], body["devices_connected"]) == (False, "DISCONNECTED", 0)


async def test_outside_opening_hours_is_closed_even_when_connected(
    client: httpx.AsyncClient, store: PresenceStore
) -> None:
    await add_restaurant("r-closed", hours=ALWAYS_CLOSED)
    await birth(store, "r-closed")

    body = (await client.get("/restaurants/r-closed/status")).json()

    assert (body["online"], body["reason"]) == (False, "CLOSED")


async def test_unknown_restaurant_is_404_and_bad_id_is_422(client: httpx.AsyncClient) -> None:
    missing = await client.get("/restaurants/r-nowhere/status")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "unknown restaurant 'r-nowhere'"}

    for bad in ("has space", "x" * 65, "dots.are.not.ids"):
        response = await client.get(f"/restaurants/{bad}/status")
        assert response.status_code == 422, bad
        error = response.json()["detail"][0]
        assert error["loc"] == ["path", "restaurant_id"]
        assert "1-64 characters" in error["msg"]


async def test_batch_reports_unknown_ids_and_collapses_duplicates(
    client: httpx.AsyncClient, store: PresenceStore
) -> None:
    await add_restaurant("r-a")
    await add_restaurant("r-b", hours=ALWAYS_CLOSED)
    await birth(store, "r-a")

    by_query = await client.get("/restaurants/status", params={"ids": "r-b, r-ghost,r-a,r-b,"})
    by_body = await client.post("/restaurants/status/query", json={"ids": ["r-b", "r-ghost", "r-a", "r-b"]})

    for response in (by_query, by_body):
        assert response.status_code == 200, response.text
        body = response.json()
        assert [(s["restaurant_id"], s["online"], s["reason"]) for s in body["statuses"]] == [
            ("r-b", False, "CLOSED"),
            ("r-a", True, None),
        ]
        assert body["unknown"] == ["r-ghost"]


async def test_batch_answers_from_views_and_derivation_alike(
    app: FastAPI, client: httpx.AsyncClient, store: PresenceStore
) -> None:
    # core/status_view.py: a settled restaurant is served from its view, the others are derived; the body
    # is StatusBatch's either way, in the order asked, byte for byte.
    service: StatusService = app.state.status_service
    await add_restaurant("v-settled", hours=OpeningHours(mon=None, tue=None, wed=None, thu=None, fri=None))
    await add_restaurant("v-fresh")
    for rid in ("v-settled", "v-fresh"):
        await birth(store, rid)
    await service.settle("v-settled")  # closed all week but for the weekend: a view until the next opening
    asked = ["v-fresh", "v-ghost", "v-settled"]

    before = _statuses_counted((await client.get("/metrics")).text)
    response = await client.post("/restaurants/status/query", json={"ids": asked})
    after = _statuses_counted((await client.get("/metrics")).text)

    assert response.status_code == 200, response.text
    body = StatusBatch.model_validate_json(response.content)
    assert [s.restaurant_id for s in body.statuses] == ["v-fresh", "v-settled"]
    assert body.unknown == ["v-ghost"]
    assert response.content == body.model_dump_json().encode()
    assert (after["view"] - before["view"], after["derived"] - before["derived"]) == (1, 1)

    # One restaurant's status is answered the same way, as in the batch (v-fresh is open all week: its
    # `until`, a week from the instant asked, moves with the clock).
    for rid, source in (("v-settled", "view"), ("v-fresh", "derived")):
        before = _statuses_counted((await client.get("/metrics")).text)
        single = await client.get(f"/restaurants/{rid}/status")
        after = _statuses_counted((await client.get("/metrics")).text)
        assert single.status_code == 200, single.text
        assert single.headers["content-type"] == "application/json"
        in_batch = next(s for s in body.statuses if s.restaurant_id == rid)
        if source == "view":
            assert single.content == in_batch.model_dump_json().encode()
        else:
            assert DerivedStatus.model_validate_json(single.content).model_dump(
                exclude={"until"}
            ) == in_batch.model_dump(exclude={"until"})
        assert after[source] - before[source] == 1, source

    # The views' facts came from the API's copy after the first read (core/view_cache.py); a will
    # written by someone else (a bridge) is in the very next answer all the same.
    scraped = (await client.get("/metrics")).text
    assert "presence_api_view_cache_tracking 1.0" in scraped
    assert _metric(scraped, "presence_api_view_cache_hits_total") >= 1
    await will(store, "v-settled")
    await service.settle("v-settled")
    again = await client.get("/restaurants/v-settled/status")
    gone = DerivedStatus.model_validate_json(again.content)
    assert (gone.online, gone.devices_connected) == (False, 0)


def _metric(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _statuses_counted(metrics: str) -> dict[str, float]:
    found = re.findall(r'^presence_api_statuses_total\{source="(\w+)"\} (\S+)$', metrics, re.MULTILINE)
    return {"view": 0.0, "derived": 0.0} | {source: float(value) for source, value in found}


async def test_batch_limits_and_invalid_ids_are_422(client: httpx.AsyncClient, settings: Settings) -> None:
    too_many = [f"r{n}" for n in range(settings.max_status_ids + 1)]
    response = await client.post("/restaurants/status/query", json={"ids": too_many})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "at most 10000 restaurant ids per request, got 10001"

    # The limit counts distinct ids.
    repeated = await client.post("/restaurants/status/query", json={"ids": ["r0"] * (settings.max_status_ids + 1)})
    assert repeated.status_code == 200, repeated.text
    assert repeated.json() == {"statuses": [], "unknown": ["r0"]}

    empties: list[dict[str, list[str]]] = [{"ids": []}, {"ids": [""]}]
    for empty in empties:
        response = await client.post("/restaurants/status/query", json=empty)
        assert response.status_code == 422, empty
    assert (await client.get("/restaurants/status", params={"ids": " , "})).status_code == 422
    assert (await client.get("/restaurants/status")).status_code == 422
    assert (await client.post("/restaurants/status/query", json={"ids": "r1"})).status_code == 422
    assert (await client.post("/restaurants/status/query", content=b"{not json")).status_code == 422

    bad = await client.post("/restaurants/status/query", json={"ids": ["ok-1", "no way", "a/b"]})
    assert bad.status_code == 422
    error = bad.json()["detail"][0]
    assert error["loc"] == ["body", "ids"]
    assert "'no way', 'a/b'" in error["msg"]
    assert "ok-1" not in error["msg"]
    # Newlines: at the end of an id (which `$` once let through), or inside one (two ids, once joined).
    for wrong in ("ok-1\n", "ok-1\nok-2"):
        bad = await client.post("/restaurants/status/query", json={"ids": ["ok-3", wrong]})
        assert bad.status_code == 422, wrong
        assert repr(wrong) in bad.json()["detail"][0]["msg"]


async def test_full_batch_at_the_limit(client: httpx.AsyncClient, settings: Settings, store: PresenceStore) -> None:
    ids = [f"r{n:05d}" for n in range(settings.max_status_ids)]
    # Few documents: FerretDB's SQLite backend answers `$in` with a collection scan.
    known = ids[::50]
    await Restaurant.insert_many(
        [Restaurant(restaurant_id=rid, secret_hash="-", mqtt_hash="-", hours=ALWAYS_OPEN) for rid in known]
    )
    await birth(store, known[-1])

    response = await client.post("/restaurants/status/query", json={"ids": ids})

    assert response.status_code == 200, response.text
    body = response.json()
    assert [s["restaurant_id"] for s in body["statuses"]] == known
    assert [s["online"] for s in body["statuses"]] == [False] * (len(known) - 1) + [True]
    assert len(body["unknown"]) == len(ids) - len(known)
    assert body["unknown"][:2] == ["r00001", "r00002"]


async def test_healthz_readyz_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"redis": "ok", "mongodb": "ok", "rabbitmq": "ok"}}
    await client.get("/restaurants/r-nowhere/status")
    await client.get("/no/such/path")

    metrics = await client.get("/metrics")

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'presence_api_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    single = 'route="/restaurants/{restaurant_id}/status"'
    assert f'presence_api_requests_total{{method="GET",{single},status="404"}} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "r-nowhere" not in text
    # A count of observed requests (the histogram's _count), not a timing.
    readyz_observed = 'presence_api_request_duration_seconds_count{method="GET",route="/readyz"} 1.0'
    assert readyz_observed in text


async def test_two_apps_keep_separate_metrics(settings: Settings) -> None:
    first, second = create_app(settings), create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://a") as client:
        await client.get("/healthz")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://b") as client:
        text = (await client.get("/metrics")).text
    assert 'route="/healthz"' not in text


async def test_readyz_names_the_service_that_failed(settings: Settings, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", free_port())
    redis.start()
    try:
        redis.wait_ready()
        app = create_app(settings.model_copy(update={"redis_url": redis.url}))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client,
        ):
            assert (await client.get("/readyz")).status_code == 200
            redis.stop()

            response = await client.get("/readyz")

            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["redis"] != "ok"
            assert (body["checks"]["mongodb"], body["checks"]["rabbitmq"]) == ("ok", "ok")
            assert (await client.get("/healthz")).status_code == 200
    finally:
        redis.stop()


async def test_openapi_documents_the_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    assert spec["openapi"].startswith("3.")
    for path in ("/auth/token", "/restaurants/status", "/restaurants/status/query", "/admin/restaurants"):
        assert path in spec["paths"], path
    query = spec["paths"]["/restaurants/status/query"]["post"]
    assert query["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StatusBatch"
    }
    assert {"401", "403", "422"} <= set(query["responses"])
    assert "DerivedStatus" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == (
        "/auth/token"
    )
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text
    # Every script and style of the page is served by the API itself: no CDN is reachable.
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert assets and all(url.startswith("/static/") for url in assets), assets
    for url in assets:
        assert (await client.get(url)).status_code == 200, url
