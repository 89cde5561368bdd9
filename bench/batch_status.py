"""Batch status on its own: `POST /restaurants/status/query` with 1,000 ids from 20 concurrent clients.

N restaurants are provisioned, nine in ten with the usual hours and one in ten open all week; half get
an online device whose facts are written straight to Redis, as the bridge would, and a tenth a
scheduled unavailability in their profile; then each is settled, as the bridge and the scheduler
would, so most statuses stand as views (core/status_view.py) and the rest are derived. Then, against
an API process: the baseline (the same 1,000 ids asked with single GETs), one client alone, and the
clients at once (closed loop: each sends its next request when the last one is answered). The scale
benchmark runs the same load beside 100,000 live sessions.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio import Redis

from api.security import Principal, create_access_token
from bench.birth_latency import percentile
from bench.harness import api_process, private_servers, provision, restaurant_ids, tree_cpu_seconds
from bench.heartbeat_writer import HeartbeatWriter
from bench.report import Row, dist_ms
from bench.scale_status import BatchLoad, batch_load
from bench.wrk_load import WrkLoad, wrk_load
from core.documents import Role
from core.hours import OpeningHours
from core.messages import DeviceState, Event, EventType, utc_now
from core.presence_store import PresenceStore, now_ms
from core.settings import Settings
from core.status import Unavailability, UnavailabilityReason
from core.status_codec import profile_json
from core.status_service import StatusService

logger = logging.getLogger(__name__)


@dataclass
class BatchStatusResult:
    restaurants: int
    load: BatchLoad
    api_workers: int = 1
    api_cpu_s: float = 0.0
    wall_s: float = 0.0
    views: int = 0  # statuses standing as views when the load began
    wrk: WrkLoad | None = None  # the same load from a client in C (bench/wrk_load.py)
    wrk_api_cpu_s: float = 0.0
    # The same wrk load again with the devices' heartbeats written beside it (each drops a restaurant
    # from the API's copy, and Redis sends every API process an invalidation).
    wrk_beating: WrkLoad | None = None
    wrk_beating_api_cpu_s: float = 0.0
    heartbeats_per_s: float = 0.0


async def _facts(settings: Settings, ids: list[str]) -> int:
    """Hours and facts of a running platform, settled; returns how many statuses then stand as views.

    Nine in ten restaurants keep the usual hours (10:00-23:00 in their zone) and one in ten is open all
    week (its `until` moves with the clock: core/status_view.py); a tenth have an unavailability two
    hours ahead. Half have an online device, born now. Every one is then settled once, as the bridge
    and the scheduler settle a running platform's restaurants.
    """
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    store = PresenceStore(redis, settings.redis_prefix)
    service = StatusService(store, timedelta(seconds=settings.stale_after_s))
    try:
        snaps = await store.snapshots(ids)
        later = utc_now() + timedelta(hours=2)
        holiday = Unavailability(reason=UnavailabilityReason.HOLIDAY, start=later, end=later + timedelta(hours=1))
        profiles = {
            snap.restaurant_id: profile_json(
                snap.group or "",
                snap.rules.timezone,
                snap.rules.hours if i % 10 == 9 else OpeningHours(),
                [holiday] if i % 10 == 5 else [],
            )
            for i, snap in enumerate(snaps)
            if snap.rules is not None
        }
        await store.set_profiles(profiles)
        at = now_ms()
        births = [(rid, "tablet", 1, DeviceState.ONLINE,
                   Event(type=EventType.DEVICE_ONLINE, restaurant_id=rid, device_id="tablet", data={"epoch": 1}))
                  for rid in ids[::2]]  # fmt: skip
        for start in range(0, len(births), 1000):
            await store.apply_presence(births[start : start + 1000], at_ms=at)
        standing = 0
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            await service.settle_batch(chunk)
            standing += sum(view is not None for view in await service.views.read(chunk, utc_now()))
        return standing
    finally:
        await redis.aclose()


def batch_status_benchmark(
    restaurants: int,
    clients: int = 20,
    ids_per_request: int = 1000,
    requests: int = 25,
    api_workers: int = 1,
    keep: bool = False,
    wrk_seconds: float = 10.0,
) -> BatchStatusResult:
    result = BatchStatusResult(restaurants, BatchLoad(clients, ids_per_request), api_workers)
    with private_servers("batch-status", keep) as servers:
        ids = restaurant_ids(restaurants)
        settings = servers.settings("api")
        provision(servers, ids, settings=settings)  # profiles in the API's Redis, as in a running platform
        result.views = asyncio.run(_facts(settings, ids))
        api = api_process(settings, servers.root, api_workers)
        api.start()
        try:
            api.wait_ready(60)
            token = create_access_token(settings, Principal(subject="batch-bench", role=Role.SALES))
            assert api.pid is not None
            cpu_before = tree_cpu_seconds(api.pid)
            started = time.monotonic()
            batch_load(settings.api_port, token, ids, result.load, requests, rounds=3)
            result.api_cpu_s = tree_cpu_seconds(api.pid) - cpu_before
            result.wall_s = time.monotonic() - started
            cpu_before = tree_cpu_seconds(api.pid)
            wrk = WrkLoad(clients, ids_per_request, wrk_seconds)
            result.wrk = wrk_load(settings.api_port, token, ids, servers.root, wrk)
            result.wrk_api_cpu_s = tree_cpu_seconds(api.pid) - cpu_before
            with HeartbeatWriter(settings, ids[::2]) as beats:  # the devices _facts put online
                cpu_before = tree_cpu_seconds(api.pid)
                beating = WrkLoad(clients, ids_per_request, wrk_seconds)
                result.wrk_beating = wrk_load(settings.api_port, token, ids, servers.root, beating)
                result.wrk_beating_api_cpu_s = tree_cpu_seconds(api.pid) - cpu_before
            result.heartbeats_per_s = beats.rate()
        finally:
            api.stop()
    return result


def batch_status_rows(r: BatchStatusResult) -> list[Row]:
    b = r.load
    rate = len(b.latencies_ms) * b.ids_per_request / max(b.seconds, 1e-9)
    met = bool(b.latencies_ms) and percentile(b.latencies_ms, 99) <= 20
    return [*_wrk_rows(r), *_python_rows(r, rate, met)]


def _wrk_rows(r: BatchStatusResult) -> list[Row]:
    rows = _wrk_load_rows(r, r.wrk, r.wrk_api_cpu_s, "")
    beating = f", {r.heartbeats_per_s:,.0f} heartbeats/s beside it"
    return rows + _wrk_load_rows(r, r.wrk_beating, r.wrk_beating_api_cpu_s, beating)


def _wrk_load_rows(r: BatchStatusResult, w: WrkLoad | None, api_cpu_s: float, beside: str) -> list[Row]:
    if w is None:
        return []
    figure = (f"batch of {w.ids_per_request:,} ids, {w.connections} connections of wrk, {r.api_workers} API "
              f"process{'es' if r.api_workers > 1 else ''} ({r.restaurants:,} known){beside}")  # fmt: skip
    if w.missing:
        return [Row("status", figure, "not measured", "goal p99 ≤ 20 ms", w.missing)]
    return [
        Row("status", figure, f"p50 {w.p50_ms:.1f} / p99 {w.p99_ms:.1f} / max {w.max_ms:.1f} ms", "goal p99 ≤ 20 ms",
            ("goal met" if w.met(20) else "GOAL MISSED") + f" ({w.non_2xx} non-2xx, {w.socket_errors} socket errors)"),
        Row("status", "  statuses served, API CPU",
            f"{w.ids_per_s:,.0f} ids/s ({w.requests:,} requests in {w.seconds:.0f} s)",
            f"API {api_cpu_s / max(w.seconds, 1e-9):.2f} cores"),
    ]  # fmt: skip


def _python_rows(r: BatchStatusResult, rate: float, met: bool) -> list[Row]:
    b = r.load
    return [
        Row("status", f"batch of {b.ids_per_request:,} ids, {b.clients} Python client threads, {r.api_workers} API "
            f"process{'es' if r.api_workers > 1 else ''} ({r.restaurants:,} known)",
            dist_ms(b.latencies_ms, 1), "goal p99 ≤ 20 ms",
            ("goal met" if met else "GOAL MISSED") + f" ({b.wrong_answers} wrong, {len(b.errors)} errors)"),
        Row("status", "  statuses served, API CPU", f"{rate:,.0f} ids/s",
            f"API {r.api_cpu_s / max(r.wall_s, 1e-9):.2f} cores ({r.api_cpu_s:.1f} s CPU in {r.wall_s:.1f} s)"),
        Row("status", "  one client alone", dist_ms(b.one_client_ms, 1), "same request, nobody else asking"),
        Row("status", f"  first reading of every id, {b.ids_per_request:,} at a time", dist_ms(b.first_pass_ms, 1),
            "the API's copy of the views filling (core/view_cache.py)"),
        Row("status", "  statuses standing as views at the start", f"{r.views:,} of {r.restaurants:,}",
            "the others derived on every read"),
        Row("status", f"  baseline: {b.ids_per_request:,} single GETs", dist_ms(b.single_get_ms, 1),
            "one keep-alive client"),
    ]  # fmt: skip
