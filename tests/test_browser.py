"""The pages in a real browser (Debian's Chromium, headless, driven by Playwright) against the whole
platform on real servers: API, bridge, dashboard feed and scheduler in this process; Mosquitto and
amqtt as two broker shards, so the browser client is checked against both brokers.

Screenshots of every page go to test-results/browser/ (git-ignored).
"""

import asyncio
import random
import string
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, Page

from api.security import Principal, create_access_token
from core.db import open_mongo
from core.documents import Role, User
from core.hours import DayHours, OpeningHours
from core.secrets import hash_secret
from core.settings import Settings
from core.shards import shard_of
from tests.browser_platform import (
    CHROMIUM,
    PageErrors,
    api_process,
    chromium,
    free_port,
    have_module,
    log_in,
    platform_workers,
    screenshot,
    served_api,
    tile_kind,
)
from tests.browser_probes import (
    SYNTHETIC_FEED_JS,
    RetainedPresence,
    Truth,
    is_now,
    newer_online,
    rid_on_shard,
    stack_name,
    text_of,
)
from tests.devices import ALWAYS_OPEN, Device, make_restaurant
from tests.helpers import wait_until

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/install.sh)")

HAVE_TIMELINE = have_module("api.routes.timeline")
HAVE_RANKING = have_module("api.routes.reports")
SALES, SALES_PASSWORD = "sales-web", "sales-web-password"
ADMIN, ADMIN_PASSWORD = "admin-web", "admin-web-password"


@pytest.fixture
def web_settings(settings: Settings, stack: Any) -> Settings:
    if stack.amqtt is None:
        pytest.skip("amqtt is not available")
    return settings.model_copy(
        update={
            # Shard 0 on Mosquitto, shard 1 on amqtt: the browser must pick the right one by the hash.
            "mqtt_brokers": [stack.mosquitto_url, stack.amqtt_url],
            "public_mqtt_ws_urls": [stack.mosquitto_ws_url, stack.amqtt_ws_url],
            "mqtt_shared_group": f"g{uuid.uuid4().hex[:8]}",
            "bridge_metrics_port": -1,
            "feed_metrics_port": -1,
            "scheduler_metrics_port": -1,
            "aggregator_metrics_port": -1,
            "dashboard_heartbeat_s": 1.0,
        }
    )


@pytest.fixture
async def base_url(web_settings: Settings) -> AsyncIterator[str]:
    async with served_api(web_settings, free_port()) as url:
        await add_users()
        yield url


async def add_users() -> None:
    for username, password, role in ((SALES, SALES_PASSWORD, Role.SALES), (ADMIN, ADMIN_PASSWORD, Role.ADMIN)):
        await User(username=username, password_hash=hash_secret(password), role=role).insert()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


async def test_shard_of_in_the_browser_matches_python(base_url: str, browser: Browser) -> None:
    rng = random.Random(4)
    alphabet = string.ascii_letters + string.digits + "_-"
    cases = [
        ("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 64))), rng.choice([1, 2, 3, 4, 7, 16, 1000]))
        for _ in range(2000)
    ]
    page = await browser.new_page()
    await page.goto(f"{base_url}/ui/login")
    got = await page.evaluate(
        """async cases => {
            const { shardOf } = await import('/ui/assets/js/shards.js');
            return cases.map(([rid, n]) => shardOf(rid, n));
        }""",
        cases,
    )
    assert got == [shard_of(rid, n) for rid, n in cases]


async def test_config_and_pages_are_served(base_url: str, web_settings: Settings, browser: Browser) -> None:
    page = await browser.new_page()
    response = await page.goto(f"{base_url}/ui/config.json")
    assert response is not None and await response.json() == {
        "mqtt_ws_urls": web_settings.public_mqtt_ws_urls,
        "heartbeat_interval_s": web_settings.heartbeat_interval_s,
    }
    response = await page.goto(base_url)
    assert response is not None and response.ok
    # Not logged in: the dashboard sends the browser to the login page, which remembers where to return.
    await page.wait_for_url(f"{base_url}/ui/login?next=%2Fui%2Fdashboard")
    for path in ("/ui/vendor/mqtt/mqtt.esm.js", "/ui/vendor/chart.js/chart.umd.min.js", "/ui/assets/js/session.js"):
        response = await page.goto(f"{base_url}{path}")
        assert response is not None and response.ok, path
    # An encoded "/" reaches the route as part of the path: it must not climb out of the served folder.
    outside = ("/ui/vendor/mqtt/..%2Fpackage.json", "/ui/assets/..%2F..%2F..%2Fpyproject.toml")
    for path in (*outside, "/ui/vendor/left-pad/index.js", "/ui/nope", "/ui/restaurants/a%20b"):
        response = await page.goto(f"{base_url}{path}")
        assert response is not None and response.status == 404, path


async def test_login_refuses_a_wrong_secret(base_url: str, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{base_url}/ui/login")
    await page.fill("#username", SALES)
    await page.fill("#password", "not-the-password")
    await page.click("button[type=submit]")
    await page.wait_for_function("document.getElementById('error').textContent.includes('Wrong')")
    await screenshot(page, "login-wrong-secret")


@pytest.mark.parametrize("shard", [0, 1], ids=["mosquitto", "amqtt"])
async def test_restaurant_client_session_drives_the_dashboard(
    shard: int, base_url: str, web_settings: Settings, stack: Any, browser: Browser
) -> None:
    rid = rid_on_shard(shard)
    secret = await make_restaurant(web_settings, stack, rid, ALWAYS_OPEN, group="W")
    errors = PageErrors()
    probe = RetainedPresence(web_settings.mqtt_brokers[shard], web_settings, rid)
    try:
        async with platform_workers(web_settings):
            dashboard = errors.watch(await (await browser.new_context()).new_page(), "dashboard")
            await log_in(dashboard, base_url, SALES, SALES_PASSWORD, "/ui/dashboard")
            restaurant_context = await browser.new_context()
            client = errors.watch(await restaurant_context.new_page(), "client")
            await log_in(client, base_url, rid, secret, "/ui/client")

            # Logged in → the browser's birth → the tile turns online, and the client hears its own status.
            await wait_until(lambda: tile_kind(dashboard, rid), 20, message="tile never appeared")
            assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "online"), 20)
            await client.wait_for_function("document.getElementById('status').dataset.kind === 'online'")
            assert await client.text_content("#status") == "Online"
            birth = probe.last()
            assert birth is not None and birth["state"] == "online"
            url = await client.evaluate("window.presenceClient.url")
            assert url == web_settings.public_mqtt_ws_urls[shard]
            await screenshot(client, f"client-online-{stack_name(shard)}")
            await screenshot(dashboard, f"dashboard-online-{stack_name(shard)}")

            # A reload is a new connection: a greater epoch, kept in localStorage across the reload.
            await client.reload()
            await wait_until(lambda: newer_online(probe, birth["epoch"]), 20, message="no birth after reload")
            # A dropped connection: the client comes back by itself, as a new connection with a new epoch
            # (and a new will); the broker's will for the dropped one carries the old epoch.
            reloaded = probe.last()
            assert reloaded is not None
            await client.evaluate("window.presenceClient.session.dropConnection()")
            await wait_until(lambda: newer_online(probe, reloaded["epoch"]), 20, message="no reconnect")
            reborn = probe.last()
            assert reborn is not None
            old_will = {"state": "offline", "epoch": reloaded["epoch"]}.items()
            await wait_until(lambda: any(old_will <= m.items() for m in probe.messages), 20, message="no will")
            assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "online"), 20)

            # Logout: presence offline "graceful" with the live epoch, then the tile turns disconnected.
            await client.click("header .logout")
            await client.wait_for_url(f"{base_url}/ui/login")
            await wait_until(lambda: (probe.last() or {}).get("cause") == "graceful", 20, message="no graceful offline")
            graceful = probe.last()
            assert graceful is not None and graceful["state"] == "offline" and graceful["epoch"] == reborn["epoch"]
            assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "disconnected"), 20)
            assert await client.evaluate("sessionStorage.length") == 0

            # In again, then the page is closed without a word: the broker publishes the will.
            await log_in(client, base_url, rid, secret, "/ui/client")
            assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "online"), 20)
            live = probe.last()
            assert live is not None and live["state"] == "online" and live["epoch"] > reborn["epoch"]
            await restaurant_context.close()
            await wait_until(lambda: (probe.last() or {}).get("state") == "offline", 30, message="no will")
            will = probe.last()
            assert will is not None and will["epoch"] == live["epoch"] and "cause" not in will
            assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "disconnected"), 20)
            await screenshot(dashboard, f"dashboard-after-will-{stack_name(shard)}")
    finally:
        probe.close()
    assert errors.errors == []


async def test_client_tells_when_it_opens_on_the_restaurants_clock(
    base_url: str, web_settings: Settings, stack: Any, browser: Browser
) -> None:
    """A closed restaurant reads "Closed until HH:MM" in its own zone, whatever the browser's zone."""
    zone = ZoneInfo(web_settings.default_timezone)
    now = datetime.now(zone)
    opens = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    window = DayHours(open=f"{opens.hour:02d}:00", close=f"{(opens.hour + 1) % 24:02d}:00")
    hours = OpeningHours(**dict.fromkeys(OpeningHours.model_fields, window))
    rid = rid_on_shard(1)
    secret = await make_restaurant(web_settings, stack, rid, hours, group="C")
    expected = f"Closed until {opens:%H:%M}" if opens.date() == now.date() else f"Closed until {opens:%a %H:%M}"
    errors = PageErrors()
    async with platform_workers(web_settings):
        client = errors.watch(await (await browser.new_context(timezone_id="Asia/Tokyo")).new_page(), "client")
        await log_in(client, base_url, rid, secret, "/ui/client")
        await client.wait_for_function("document.getElementById('status').dataset.kind === 'closed'")
        assert await text_of(client, "#status") == expected
        await screenshot(client, "client-closed")
    assert errors.errors == []


async def test_an_unavailability_shows_on_the_client_the_dashboard_and_the_restaurant_page(
    base_url: str, web_settings: Settings, stack: Any, browser: Browser
) -> None:
    rid = rid_on_shard(0)
    secret = await make_restaurant(web_settings, stack, rid, ALWAYS_OPEN, group="U")
    errors = PageErrors(ignore=() if HAVE_TIMELINE else ("/timeline",))
    async with platform_workers(web_settings):
        dashboard = errors.watch(await (await browser.new_context()).new_page(), "dashboard")
        await log_in(dashboard, base_url, SALES, SALES_PASSWORD, "/ui/dashboard")
        client = errors.watch(await (await browser.new_context()).new_page(), "client")
        client.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await log_in(client, base_url, rid, secret, "/ui/client")
        assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "online"), 20)

        # The restaurant pauses orders for an hour, starting now, from its own page.
        await client.select_option("select[name=reason]", "HOLIDAY")
        await client.click("button[data-minutes='60']")
        await client.fill("input[name=note]", "family day")
        await client.click("form.schedule-form button[type=submit]")
        row = client.locator("table.history tbody tr[data-state=active]")
        await row.wait_for()
        assert "family day" in await row.inner_text()
        await client.wait_for_function("document.getElementById('status').dataset.kind === 'unavailable'")
        assert (await text_of(client, "#status")).startswith("Unavailable — holiday until ")
        assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "unavailable"), 20)
        tile = dashboard.locator(f".tile[data-rid='{rid}']")
        assert await tile.locator(".what").inner_text() == "holiday"
        await screenshot(client, "client-unavailable")
        await screenshot(dashboard, "dashboard-unavailable")

        # Sales follow the tile to the restaurant's page: status, timeline bar and the same history.
        await tile.click()
        await dashboard.wait_for_url(f"{base_url}/ui/restaurants/{rid}")
        await dashboard.wait_for_function("document.getElementById('badge').dataset.kind === 'unavailable'")
        history = dashboard.locator("table.history tbody tr[data-state=active]")
        await history.wait_for()
        assert "family day" in await history.inner_text()
        assert await dashboard.locator("form.schedule-form").count() == 0  # sales may only read
        await screenshot(dashboard, "restaurant-page-unavailable")

        # Cancelled from the client: history keeps it, marked cancelled; both pages are online again.
        await client.click("table.history button[data-cancel]")
        await client.locator("table.history tbody tr[data-state=cancelled]").wait_for()
        await client.wait_for_function("document.getElementById('status').dataset.kind === 'online'")
        await dashboard.go_back()
        assert await wait_until(lambda: is_now(tile_kind(dashboard, rid), "online"), 20)
        await screenshot(client, "client-cancelled")
    assert errors.errors == []


async def test_dashboard_misses_nothing_across_a_dropped_socket_and_an_api_restart(
    web_settings: Settings, stack: Any, browser: Browser
) -> None:
    rids = [rid_on_shard(0) for _ in range(6)]
    port = free_port()
    truth = Truth(web_settings)
    errors = PageErrors(ignore=("WebSocket connection to",))  # refused while the API is down
    devices: dict[str, Device] = {}
    # The API runs as its own process here, so that stopping it is a real server restart (and its
    # MongoDB client is not the one this process's workers share through Beanie).
    mongo = await open_mongo(web_settings)
    try:
        await add_users()
        async with platform_workers(web_settings):
            async with api_process(web_settings, port) as base:
                for rid in rids:
                    secret = await make_restaurant(web_settings, stack, rid, ALWAYS_OPEN, group="R")
                    devices[rid] = Device(stack.mosquitto_url, rid, secret)
                page = errors.watch(await browser.new_page(), "dashboard")
                await log_in(page, base, SALES, SALES_PASSWORD, "/ui/dashboard")
                for rid in rids[:4]:
                    await asyncio.to_thread(devices[rid].connect, 1)
                seen = rids[:4]
                await wait_until(lambda: truth.shown_everything(page, seen), 20, message="dashboard never caught up")

                # 1. The socket drops (as a network would) while statuses change.
                await page.evaluate("window.presenceDashboard.feed.forceReconnect()")
                await asyncio.to_thread(devices[rids[0]].crash)
                await asyncio.to_thread(devices[rids[4]].connect, 1)
                seen = rids[:5]
                await wait_until(lambda: truth.shown_everything(page, seen), 20, message="missed across the drop")
                before_restart = await page.evaluate("window.presenceDashboard.feed.lastSeq")

            # 2. The API is gone; statuses change and the feed sequences them meanwhile.
            await asyncio.to_thread(devices[rids[1]].crash)
            await asyncio.to_thread(devices[rids[5]].connect, 1)
            await asyncio.to_thread(devices[rids[0]].connect, 2)
            for rid, online in ((rids[1], False), (rids[5], True), (rids[0], True)):
                await wait_until(partial(truth.sequenced, before_restart, rid, online), 20, message=rid)
            await page.wait_for_function("!document.getElementById('feed-state').classList.contains('live')")
            await screenshot(page, "dashboard-api-down")

            async with api_process(web_settings, port):
                seen = rids
                await wait_until(lambda: truth.shown_everything(page, seen), 40, message="missed across the restart")
                stats = await page.evaluate("window.presenceDashboard.feed.stats")
                # Both times it resumed with `since` (no second snapshot), and nothing came twice.
                assert stats["snapshots"] == 1 and stats["resumes"] >= 2 and stats["duplicates"] == 0, stats
                await screenshot(page, "dashboard-after-restart")
    finally:
        for device in devices.values():
            await asyncio.to_thread(device.stop)
        await truth.close()
        await mongo.close()
    assert errors.errors == []


async def test_dashboard_grid_holds_100000_restaurants_with_a_few_hundred_tiles(
    base_url: str, web_settings: Settings, browser: Browser
) -> None:
    """The grid is virtualised: the counts cover every restaurant, the DOM only the tiles in view."""
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    errors = PageErrors()
    errors.watch(page, "dashboard")
    async with platform_workers(web_settings):
        await log_in(page, base_url, SALES, SALES_PASSWORD, "/ui/dashboard")
        await page.wait_for_function("window.presenceDashboard?.feed.stats.snapshots === 1")
        await check_grid_at_scale(page)
    assert errors.errors == []


async def check_grid_at_scale(page: Page) -> None:
    # A snapshot of 100,000 statuses handed to the page as the feed would, then a burst of 20,000 changes.
    timings = await page.evaluate(SYNTHETIC_FEED_JS)
    print(f"100,000-restaurant snapshot drawn in {timings['snapshotMs']:.0f} ms;", end=" ")
    print(f"20,000 changes in {timings['burstMs']:.0f} ms")
    assert await page.text_content(".count[data-kind=all] .n") == "100,000"
    # 20,000 changes turned 15,000 non-online restaurants online (every fifth id; a quarter were online).
    assert await page.text_content(".count[data-kind=online] .n") == "40,000"
    tiles = await page.locator(".tile:not([hidden])").count()
    assert 0 < tiles < 1000
    await screenshot(page, "dashboard-100k")

    # Scrolled to the end, the last restaurant is in view; filtered to a group, the counts follow it.
    await page.evaluate("document.getElementById('grid').scrollTop = 1e9")
    await page.locator(".tile[data-rid='r-099999']").wait_for()
    await page.select_option("#group", "B")
    await page.wait_for_function("document.querySelector('.count[data-kind=all] .n').textContent === '25,000'")
    await page.click(".count[data-kind=unavailable]")
    await page.wait_for_function(
        "[...document.querySelectorAll('.tile:not([hidden])')].every(t => t.dataset.kind === 'unavailable')"
    )
    assert await page.locator(".tile:not([hidden])").count() < 1000
    assert await page.text_content(".count[data-kind=unavailable] .n") == "5,000"
    await page.fill("#search", "r-0001")
    await page.wait_for_function("document.querySelectorAll('.tile:not([hidden])').length === 6")
    shown = await page.eval_on_selector_all(".tile:not([hidden])", "ts => ts.map(t => t.dataset.rid)")
    # Group B holds ids 4-7 modulo 16, and 2 modulo 4 is a holiday: 102, 118, 134, 166, 182, 198 (150 went online).
    assert shown == [f"r-{i:06d}" for i in (102, 118, 134, 166, 182, 198)]
    await screenshot(page, "dashboard-100k-filtered")

    # A reset (what we missed is no longer kept) is followed by a snapshot that replaces everything.
    await page.evaluate(
        """() => {
            const feed = window.presenceDashboard.feed;
            feed._onFrame(JSON.stringify({type: "reset", reason: "since too old"}));
            const status = (rid) => ({restaurant_id: rid, online: true, reason: null, detail: null, group: "B"});
            const statuses = ["r-000102", "z-1", "z-2"].map(status);
            feed._onFrame(JSON.stringify({type: "snapshot", seq: 5, group: null, statuses}));
        }"""
    )
    await page.wait_for_function("document.querySelector('.count[data-kind=all] .n').textContent === '3'")
    assert await page.evaluate("window.presenceDashboard.feed.lastSeq") == 5


@pytest.mark.skipif(not (HAVE_TIMELINE and HAVE_RANKING), reason="needs the timeline and ranking endpoints")
async def test_restaurant_timeline_and_offline_ranking_pages(
    base_url: str, web_settings: Settings, stack: Any, browser: Browser, tmp_path: Path
) -> None:
    flaky, steady = rid_on_shard(0), rid_on_shard(0)
    devices = {
        rid: Device(stack.mosquitto_url, rid, await make_restaurant(web_settings, stack, rid, ALWAYS_OPEN, group="T"))
        for rid in (flaky, steady)
    }
    token = create_access_token(web_settings, Principal(subject=SALES, role=Role.SALES))
    errors = PageErrors()
    try:
        async with platform_workers(web_settings), httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            for device in devices.values():
                await asyncio.to_thread(device.connect, 1)

            async def disconnected_in_history() -> bool:
                timeline = (await http.get(f"/restaurants/{flaky}/timeline")).json()
                return any(i["reason"] == "DISCONNECTED" for i in timeline.get("intervals", []))

            await wait_until(lambda: _online_in_history(http, flaky), 30, message="no online interval")
            await asyncio.to_thread(devices[flaky].crash)
            await wait_until(disconnected_in_history, 30, message="no disconnected interval")

            async def flaky_ranks_first() -> bool:
                ranking = (await http.get("/reports/offline-ranking", params={"group": "T"})).json()
                return bool(ranking["rows"]) and ranking["rows"][0]["restaurant_id"] == flaky

            await wait_until(flaky_ranks_first, 30, message="the disconnected restaurant never ranked first")

            page = errors.watch(await browser.new_page(viewport={"width": 1280, "height": 900}), "sales")
            await log_in(page, base_url, SALES, SALES_PASSWORD, "/ui/dashboard")
            await page.goto(f"{base_url}/ui/restaurants/{flaky}")
            await page.locator("#timeline .seg[data-kind=disconnected]").first.wait_for()
            await page.locator("#timeline .seg[data-kind=online]").first.wait_for()
            assert "Disconnected:" in await text_of(page, "#totals")
            await page.click("details summary")
            await screenshot(page, "restaurant-page-timeline")
            # Another day: the bar is drawn again from that day's timeline, without an error.
            today = await page.input_value("#day")
            async with page.expect_response(lambda r: "/timeline?" in r.url) as answer:
                await page.click("#prev-day")
            assert (await answer.value).ok
            assert await page.input_value("#day") < today
            assert await text_of(page, "#timeline-error") == ""

            await page.goto(f"{base_url}/ui/ranking")
            await page.fill("input[name=group]", "T")
            await page.click("#query button[type=submit]")
            first = page.locator("#table tbody tr").first
            await first.wait_for()
            await page.wait_for_function(
                f"document.querySelector('#table tbody tr td:nth-child(2)')?.textContent === '{flaky}'"
            )
            assert (await first.locator("td").first.inner_text()).strip() == "1"
            await screenshot(page, "ranking")

            async with page.expect_download() as download_info:
                await page.click("#csv")
            download = await download_info.value
            name = download.suggested_filename
            assert name.startswith("offline-ranking_") and name.endswith("_T.csv"), name
            saved = tmp_path / "ranking.csv"
            await download.save_as(saved)
            lines = saved.read_text().splitlines()
            assert lines[0] == "rank,restaurant_id,group,offline_seconds"
            assert lines[1].startswith(f"1,{flaky},T,")
    finally:
        for device in devices.values():
            await asyncio.to_thread(device.stop)
    assert errors.errors == []


async def _online_in_history(http: httpx.AsyncClient, rid: str) -> bool:
    timeline = (await http.get(f"/restaurants/{rid}/timeline")).json()
    return any(i["online"] for i in timeline.get("intervals", []))
