"""GET /restaurants/{rid}/timeline and GET /reports/offline-ranking over a history written by the
aggregator's own writer (aggregator.history_writer) into the test's FerretDB database."""

import csv
import io
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from aggregator.history_writer import HistoryWriter
from api.security import Principal, create_access_token
from core.documents import Restaurant, Role
from core.history_documents import HistoryDay, HistoryHead, OngoingOffline
from core.history_store import Profile, RestaurantWriter, StatusChange, Written, restaurant_timeline, to_ms
from core.offline_ranking import offline_ranking
from core.settings import Settings
from core.status import OfflineReason, StatusCore
from core.timeline import Point, disconnected_seconds_by_day, intervals

D = StatusCore(online=False, reason=OfflineReason.DISCONNECTED)
ON = StatusCore(online=True)
CLOSED = StatusCore(online=False, reason=OfflineReason.CLOSED)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def client_for(app: FastAPI, settings: Settings, principal: Principal) -> httpx.AsyncClient:
    token = create_access_token(settings, principal)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test", headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
async def sales(app: FastAPI, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, settings, Principal("sales", Role.SALES)) as client:
        yield client


async def history(rid: str, points: list[tuple[datetime, StatusCore]], timezone: str = "UTC", group: str = "A") -> None:
    """Provision the restaurant and write its points as the aggregator would."""
    if await Restaurant.get(rid) is None:
        await Restaurant(restaurant_id=rid, secret_hash="-", mqtt_hash="-", timezone=timezone, group=group).insert()
    changes = [StatusChange(rid, when, core, to_ms(when)) for when, core in points]
    await HistoryWriter().write(changes, {rid: Profile(timezone, group)})


async def test_timeline_intervals_and_its_bounds(app: FastAPI, sales: httpx.AsyncClient) -> None:
    t0, t1, t2 = at("2026-11-20T10:00:00Z"), at("2026-11-20T11:00:00Z"), at("2026-11-20T11:20:00Z")
    await history("tl", [(t0, ON), (t1, D), (t2, ON)])

    response = await sales.get("/restaurants/tl/timeline", params={"from": "2026-11-20T09:00:00Z",
                                                                   "to": "2026-11-20T12:00:00Z"})  # fmt: skip

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["restaurant_id"], at(body["from"]), at(body["to"])) == ("tl", t0 - timedelta(hours=1),
                                                                         t2 + timedelta(minutes=40))  # fmt: skip
    assert [(at(i["start"]), at(i["end"]), i["online"], i["reason"], i["detail"]) for i in body["intervals"]] == [
        (t0, t1, True, None, None),  # the history begins at the first known status
        (t1, t2, False, "DISCONNECTED", None),
        (t2, at("2026-11-20T12:00:00Z"), True, None, None),
    ]
    # Later than the last point: its status still holds, up to `to` (or now, whichever is first).
    later = await sales.get("/restaurants/tl/timeline", params={"from": "2026-11-22T00:00:00+00:00",
                                                                "to": "2026-11-22T06:00:00+00:00"})  # fmt: skip
    assert [(i["online"], i["start"], i["end"]) for i in later.json()["intervals"]] == [
        (True, "2026-11-22T00:00:00Z", "2026-11-22T06:00:00Z")
    ]
    default = await sales.get("/restaurants/tl/timeline")  # the last 24 h
    start, end = at(default.json()["from"]), at(default.json()["to"])
    assert end - start == timedelta(hours=24)
    assert default.json()["intervals"][-1]["end"] <= default.json()["to"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2026-11-20T10:00:00Z", "to": "2026-11-20T10:00:00Z"}, "before to"),
        ({"from": "2026-11-20T10:00:00", "to": "2026-11-20T12:00:00Z"}, "UTC offset"),
        ({"from": "2026-10-01T00:00:00Z", "to": "2026-11-20T00:00:00Z"}, "at most 31 days"),
        ({"from": "yesterday"}, "datetime"),
    ],
)
async def test_timeline_refuses_a_wrong_range(
    app: FastAPI, sales: httpx.AsyncClient, params: dict[str, str], message: str
) -> None:
    await history("tl", [(at("2026-11-20T10:00:00Z"), ON)])
    response = await sales.get("/restaurants/tl/timeline", params=params)
    assert response.status_code == 422, response.text
    assert message in response.text


async def test_timeline_access_and_unknown_restaurant(
    app: FastAPI, settings: Settings, sales: httpx.AsyncClient
) -> None:
    await history("mine", [(at("2026-11-20T10:00:00Z"), ON)])
    await history("other", [(at("2026-11-20T10:00:00Z"), ON)])
    async with client_for(app, settings, Principal("mine", Role.RESTAURANT, "mine")) as own:
        assert (await own.get("/restaurants/mine/timeline")).status_code == 200
        assert (await own.get("/restaurants/other/timeline")).status_code == 403
    assert (await sales.get("/restaurants/ghost/timeline")).status_code == 404


async def ranking_rows(client: httpx.AsyncClient, params: dict[str, str | int]) -> list[tuple[int, str, str, float]]:
    response = await client.get("/reports/offline-ranking", params=params)
    assert response.status_code == 200, response.text
    return [(r["rank"], r["restaurant_id"], r["group"], r["offline_seconds"]) for r in response.json()["rows"]]


async def test_ranking_orders_limits_filters_and_gives_csv(app: FastAPI, sales: httpx.AsyncClient) -> None:
    day = "2026-11-20"
    for rid, minutes, group in (("a", 30, "A"), ("b", 90, "B"), ("c", 30, "A"), ("d", 0, "B"), ("e", 45, "A")):
        start = at(f"{day}T10:00:00Z")
        points = [(start, D), (start + timedelta(minutes=minutes), ON)] if minutes else [(start, ON)]
        await history(rid, points, group=group)

    rows = await ranking_rows(sales, {"from": day, "to": day})
    assert rows == [(1, "b", "B", 5400.0), (2, "e", "A", 2700.0), (3, "a", "A", 1800.0), (4, "c", "A", 1800.0),
                    (5, "d", "B", 0.0)]  # fmt: skip
    assert await ranking_rows(sales, {"from": day, "to": day, "limit": 2}) == rows[:2]
    assert [r[1] for r in await ranking_rows(sales, {"from": day, "to": day, "group": "A"})] == ["e", "a", "c"]
    assert await ranking_rows(sales, {"from": "2026-11-21", "to": "2026-11-21", "limit": 1}) == [
        (1, "a", "A", 0.0)  # nothing that day: all tied at 0, by id
    ]

    as_csv = await sales.get("/reports/offline-ranking", params={"from": day, "to": day},
                             headers={"Accept": "text/csv"})  # fmt: skip
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(as_csv.text)))
    assert table[0] == ["rank", "restaurant_id", "group", "offline_seconds"]
    assert [(int(r[0]), r[1], r[2], float(r[3])) for r in table[1:]] == rows
    by_param = await sales.get("/reports/offline-ranking", params={"from": day, "to": day, "format": "csv"})
    assert by_param.text == as_csv.text


async def test_ranking_counts_ongoing_disconnections_up_to_now(app: FastAPI, sales: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    await history("down", [(now - timedelta(minutes=10), D)])
    rows = await ranking_rows(sales, {"from": (now - timedelta(days=1)).date().isoformat(),
                                        "to": (now + timedelta(days=1)).date().isoformat()})  # fmt: skip
    assert rows[0][1] == "down" and 600 <= rows[0][3] < 700


async def test_ranking_access_and_bad_input(app: FastAPI, settings: Settings, sales: httpx.AsyncClient) -> None:
    async with client_for(app, settings, Principal("r", Role.RESTAURANT, "r")) as own:
        assert (await own.get("/reports/offline-ranking")).status_code == 403
    for params, message in (
        ({"from": "2026-11-20", "to": "2026-11-19"}, "must not be after"),
        ({"from": "2026-01-01", "to": "2026-11-19"}, "at most 92 days"),
        ({"limit": 0}, "greater than or equal to 1"),
        ({"limit": 100_001}, "less than or equal to 100000"),
        ({"group": "no spaces"}, "A-Z"),
    ):
        response = await sales.get("/reports/offline-ranking", params=params)
        assert response.status_code == 422 and message in response.text, (params, response.text)


async def test_writer_in_any_order_and_batching_gives_the_brute_force_totals(app: FastAPI) -> None:
    """Random histories, written in random order and batches with repeats, against core.timeline."""
    tz = "America/New_York"  # daylight saving ends 2026-11-01 inside the span
    cores = [ON, D, CLOSED, StatusCore(online=False, reason=OfflineReason.UNAVAILABLE, detail="OTHER")]
    for seed in range(4):
        rng = random.Random(seed)
        when = at("2026-10-30T03:00:00Z")
        points = []
        for _ in range(rng.randint(3, 12)):
            points.append((when, rng.choice(cores)))
            when += timedelta(minutes=rng.randint(1, 900))
        rid = f"w{seed}"
        sent = points + rng.sample(points, k=2)
        rng.shuffle(sent)
        while sent:
            size = rng.randint(1, 4)
            await history(rid, sent[:size], timezone=tz)
            sent = sent[size:]
        last = points[-1][0]
        want = disconnected_seconds_by_day(intervals([Point(w, c) for w, c in points], points[0][0], last, last), tz)
        docs = {d.id.split("|")[1]: d.offline_ms for d in await HistoryDay.find_all().to_list() if d.id.startswith(rid)}
        assert {d: ms for d, ms in docs.items() if ms} == {d.isoformat(): round(s * 1000) for d, s in want.items()}
        days = sorted(date.fromisoformat(d) for d in docs)
        assert days == [days[0] + timedelta(days=n) for n in range(len(days))], "a document for every day"
        now = last + timedelta(hours=1)
        timeline = await restaurant_timeline(rid, points[0][0] - timedelta(days=1), now, now, tz)
        assert timeline == intervals([Point(w, c) for w, c in points], points[0][0], now, now)


async def test_a_batch_cut_after_its_day_documents_is_completed_by_its_redelivery(app: FastAPI) -> None:
    """No transactions: a batch may stop after any write. Its messages come again, and must finish it."""
    t0, t1, t2 = at("2026-11-20T10:00:00Z"), at("2026-11-20T11:00:00Z"), at("2026-11-20T11:30:00Z")
    await history("cut", [(t0, ON), (t1, D)])
    cut = StatusChange("cut", t2, ON, to_ms(t2))
    writer = RestaurantWriter("cut", Profile("UTC", "A"))
    await writer.load_head()
    await writer.apply(cut, Written())
    await HistoryDay.get_pymongo_collection().bulk_write(writer.day_writes())  # then the process dies

    await HistoryWriter().write([cut], {"cut": Profile("UTC", "A")})  # the redelivery

    head = await HistoryHead.get("cut")
    assert head is not None and head.at == t2 and head.status[0] is True
    assert await OngoingOffline.get("cut") is None
    rows = await offline_ranking(date(2026, 11, 20), date(2026, 11, 20), datetime.now(UTC))
    assert [(r.restaurant_id, r.offline_seconds) for r in rows] == [("cut", 1800.0)]
