"""client_sim's restaurants schedule and cancel unavailabilities through the real API, and log them."""

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
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        for cred in restaurants:
            token = (await client.post("/auth/token", data={"username": cred.restaurant_id,
                                                             "password": cred.secret})).json()["access_token"]
            listed = (await client.get(f"/restaurants/{cred.restaurant_id}/unavailabilities",
                                       headers={"Authorization": f"Bearer {token}"})).json()["items"]
            from_api = sorted(
                (_ms(i["start"]), _ms(i["end"]), i["reason"], _ms(i["cancelled_at"]) if i["cancelled_at"] else None)
                for i in listed
            )
            from_log = sorted(
                (_ms(u.start.isoformat()), _ms(u.end.isoformat()), u.reason.value,
                 _ms(u.cancelled_at.isoformat()) if u.cancelled_at else None)
                for u in logged[cred.restaurant_id]
            )
            assert from_api == from_log


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)
