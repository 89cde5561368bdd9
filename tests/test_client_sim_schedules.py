"""client_sim's restaurants schedule and cancel unavailabilities through the real API, and log them."""

import asyncio
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from client_sim import RestaurantCredential, SimConfig
from client_sim.ground_truth import TruthLog, read_events, unavailabilities_from_log
from client_sim.schedules import ScheduleDriver
from core.settings import Settings
from tests.devices import make_restaurant
from tests.helpers import wait_until


async def test_scheduled_and_cancelled_unavailabilities_match_the_api(
    app: FastAPI, settings: Settings, stack: Any, tmp_path: Path
) -> None:
    restaurants = [
        RestaurantCredential(rid, await make_restaurant(settings, stack, rid)) for rid in ("sched-a", "sched-b")
    ]
    config = SimConfig(api_url="http://api.test", schedule_rate=1.0, schedule_lead_s=(0.0, 3.0),
                       schedule_length_s=(1.0, 2.0), cancel_share=0.5)
    truth = TruthLog(tmp_path / "truth.jsonl")
    truth.open()
    driver = ScheduleDriver(config, restaurants, truth, random.Random(7), transport=httpx.ASGITransport(app=app))
    try:
        for index in range(12):
            await driver.schedule_one(restaurants[index % 2])
        await wait_until(lambda: driver.cancelled + driver.cancel_refused >= 1 and not driver._pending, 15)
    finally:
        await driver.close()
        truth.close()
    assert driver.created == 12 and driver.errors == 0, driver.summary()
    assert driver.cancelled >= 1, driver.summary()

    logged = unavailabilities_from_log(read_events(tmp_path / "truth.jsonl"))
    for cred in restaurants:
        from_api = sorted(
            (_ms(i["start"]), _ms(i["end"]), i["reason"], _ms(i["cancelled_at"]) if i["cancelled_at"] else None)
            for i in await listed(app, cred)
        )
        from_log = sorted(
            (_ms(u.start.isoformat()), _ms(u.end.isoformat()), u.reason.value,
             _ms(u.cancelled_at.isoformat()) if u.cancelled_at else None)
            for u in logged[cred.restaurant_id]
        )
        assert from_api == from_log


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


class LosesAnswers(httpx.AsyncBaseTransport):
    """The app handles every request; the answer to the first POST and the first DELETE of an
    unavailability is lost on the way back (as in a timeout while RabbitMQ is away)."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.lost: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "/unavailabilities" in request.url.path and request.method in ("POST", "DELETE") \
                and request.method not in self.lost:
            self.lost.append(request.method)
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


async def one_restaurant(
    settings: Settings, stack: Any, tmp_path: Path, rid: str, transport: httpx.AsyncBaseTransport,
    cancel_share: float, seed: int,
) -> tuple[RestaurantCredential, TruthLog, ScheduleDriver]:
    """A restaurant, an open truth log and a driver of its unavailabilities (5-6 s ahead, 30-40 s long)."""
    cred = RestaurantCredential(rid, await make_restaurant(settings, stack, rid))
    config = SimConfig(api_url="http://api.test", schedule_rate=1.0, schedule_lead_s=(5.0, 6.0),
                       schedule_length_s=(30.0, 40.0), cancel_share=cancel_share)  # fmt: skip
    truth = TruthLog(tmp_path / "truth.jsonl")
    truth.open()
    return cred, truth, ScheduleDriver(config, [cred], truth, random.Random(seed), transport=transport)


async def test_a_lost_answer_is_read_back_and_logged_as_the_api_holds_it(
    app: FastAPI, settings: Settings, stack: Any, tmp_path: Path
) -> None:
    rid = "sched-lost"
    transport = LosesAnswers(app)
    cred, truth, driver = await one_restaurant(settings, stack, tmp_path, rid, transport, cancel_share=0.0, seed=3)
    try:
        await driver.schedule_one(cred)  # committed, answer lost: read back
        assert driver.created == 1, driver.summary()
        (item,) = await listed(app, cred)
        await driver._cancel_later(cred, item["id"], 0.0)  # committed, answer lost: read back
    finally:
        await driver.close()
        truth.close()
    assert transport.lost == ["POST", "DELETE"]
    assert driver.created == 1 and driver.cancelled == 1 and driver.recovered == 2, driver.summary()
    (logged,) = unavailabilities_from_log(read_events(tmp_path / "truth.jsonl"))[rid]
    (item,) = await listed(app, cred)
    assert logged.cancelled_at is not None and item["cancelled_at"] is not None
    assert _ms(logged.cancelled_at.isoformat()) == _ms(item["cancelled_at"])
    assert (_ms(logged.start.isoformat()), _ms(logged.end.isoformat())) == (_ms(item["start"]), _ms(item["end"]))


async def listed(app: FastAPI, cred: RestaurantCredential) -> list[dict[str, Any]]:
    """The restaurant's unavailabilities as the API holds them."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        login = {"username": cred.restaurant_id, "password": cred.secret}
        token = (await client.post("/auth/token", data=login)).json()["access_token"]
        response = await client.get(f"/restaurants/{cred.restaurant_id}/unavailabilities",
                                    headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        items: list[dict[str, Any]] = response.json()["items"]
        return items


class SlowPosts(httpx.AsyncBaseTransport):
    """The app handles every request; each POST of an unavailability is answered only once `release` is set."""

    def __init__(self, app: FastAPI) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.posted = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/unavailabilities"):
            self.posted.set()  # committed by the API; the answer is still on its way
            await self.release.wait()
        return response


async def test_closing_lets_a_request_in_flight_finish_and_drops_cancels_not_yet_due(
    app: FastAPI, settings: Settings, stack: Any, tmp_path: Path
) -> None:
    rid = "sched-close"
    transport = SlowPosts(app)
    cred, truth, driver = await one_restaurant(settings, stack, tmp_path, rid, transport, cancel_share=1.0, seed=5)
    try:
        transport.release.set()
        await driver.schedule_one(cred)  # its cancel now waits for an instant seconds away
        transport.release.clear()
        transport.posted.clear()
        driver._spawn(driver.schedule_one(cred))
        await wait_until(transport.posted.is_set, 10, message="the second POST never reached the API")
        closing = asyncio.create_task(driver.close())  # the run ends with that POST's answer on its way
        await asyncio.sleep(0.2)
        assert not closing.done()  # it waits for the answer
        transport.release.set()
        await asyncio.wait_for(closing, 10)
    finally:
        truth.close()
    assert driver.created == 2 and driver.cancelled == 0 and driver.errors == 0, driver.summary()
    logged = unavailabilities_from_log(read_events(tmp_path / "truth.jsonl"))[rid]
    held = await listed(app, cred)
    assert sorted(_ms(u.start.isoformat()) for u in logged) == sorted(_ms(i["start"]) for i in held)
    # The cancels not yet due were dropped unasked: nothing cancelled in the API or the truth.
    assert all(u.cancelled_at is None for u in logged) and all(i["cancelled_at"] is None for i in held)
