"""The offline ranking over N restaurants × 30 days of consolidated history, on private servers.

FerretDB is filled directly with what the aggregator would have written for the ranking (the slot
directories, one uint32-per-restaurant rollup per day and bucket, a share of restaurants currently
disconnected), then the top 100 and the full CSV are timed through `core.offline_ranking` (the
endpoint's own code), and once each over HTTP from `uvicorn api.main:create_app`.

Also measured: a one-day timeline read (`core.history_store.restaurant_timeline`) with one day
document per restaurant in `history_days`, as FerretDB 1.24 ships and then with an SQLite expression
index on `_id` added to its tables by hand, because FerretDB's own `_id` index is never used by its
lookups (see core/offline_ranking.py): that figure is for deciding about the index, not a goal.
"""

import asyncio
import itertools
import logging
import random
import sqlite3
import statistics
import time
import urllib.request
from array import array
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from api.routes.reports import ranking_csv
from api.security import Principal, create_access_token
from bench.harness import api_process, private_servers, restaurant_ids
from bench.report import Row
from core.db import open_mongo
from core.documents import Role
from core.history_store import restaurant_timeline
from core.offline_ranking import bucket_of, offline_ranking, pack, rollup_collection
from core.settings import Settings
from stack.process import LOOPBACK

logger = logging.getLogger(__name__)

DB = "bench_ranking"
GOAL_TOP_S = 1.0
GOAL_CSV_S = 5.0
GROUPS = "ABCD"
TZ = "America/Sao_Paulo"
OPEN_MS = 13 * 3600 * 1000  # 10:00-23:00: no more DISCONNECTED time than that in a day
INSERT_CHUNK = 1000


@dataclass
class RankingResult:
    restaurants: int
    days: int
    rollups: int = 0
    ongoing: int = 0
    fill_s: float = 0.0
    top_s: list[float] = field(default_factory=list)
    csv_s: list[float] = field(default_factory=list)
    csv_rows: int = 0
    csv_bytes: int = 0
    http_top_s: list[float] = field(default_factory=list)
    http_csv_s: list[float] = field(default_factory=list)
    http_csv_rows: int = 0
    timeline_docs: int = 0
    timeline_s: float | None = None
    timeline_indexed_s: float | None = None


def _offline_ms(rng: random.Random) -> int:
    """Most restaurants lose a little time most days; a few lose hours."""
    if rng.random() < 0.3:
        return 0
    return min(OPEN_MS, int(rng.expovariate(1 / (20 * 60 * 1000))))


async def fill(settings: Settings, result: RankingResult, now: datetime) -> None:
    client = await open_mongo(settings)
    db = client[settings.mongo_db]
    try:
        rng = random.Random(42)
        rids = restaurant_ids(result.restaurants)
        by_bucket: dict[int, list[tuple[str, str]]] = defaultdict(list)
        for n, rid in enumerate(rids):
            by_bucket[bucket_of(rid)].append((rid, GROUPS[n % len(GROUPS)]))
        await db["history_slots"].insert_many(
            [{"_id": str(b), "rids": " ".join(r for r, _ in items), "groups": " ".join(g for _, g in items)}
             for b, items in by_bucket.items()]
        )  # fmt: skip
        last = now.date() - timedelta(days=1)
        for back in range(result.days):
            day = (last - timedelta(days=back)).isoformat()
            docs = [
                {"_id": f"{day}|{b}", "ms": pack(array("I", (_offline_ms(rng) for _ in items)))}
                for b, items in by_bucket.items()
            ]
            await db[rollup_collection(day)].insert_many(docs)
            result.rollups += len(docs)
        ongoing = rng.sample(range(result.restaurants), k=max(1, result.restaurants // 100))
        docs_o = [
            {"_id": rids[n], "since": now - timedelta(seconds=rng.uniform(0, 3 * 3600)), "timezone": TZ,
             "group": GROUPS[n % len(GROUPS)]}
            for n in ongoing
        ]  # fmt: skip
        await db["history_ongoing"].insert_many(docs_o)
        result.ongoing = len(docs_o)
    finally:
        await client.close()


async def fill_days(settings: Settings, result: RankingResult, now: datetime) -> None:
    """One day document per restaurant (yesterday) and its head, as the aggregator writes them."""
    client = await open_mongo(settings)
    db = client[settings.mongo_db]
    try:
        day = now.date() - timedelta(days=1)
        opened = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=13)
        rids = restaurant_ids(result.restaurants)
        for start in range(0, len(rids), INSERT_CHUNK):
            chunk = rids[start : start + INSERT_CHUNK]
            points = {str(int(opened.timestamp() * 1000) + k * 3_600_000): [k % 2 == 0, None if k % 2 == 0
                      else "DISCONNECTED", None, 0] for k in range(4)}  # fmt: skip
            await db["history_days"].insert_many(
                [{"_id": f"{rid}|{day}", "points": points, "before": [False, "CLOSED", None], "offline_ms": 3_600_000}
                 for rid in chunk]
            )  # fmt: skip
            await db["history_heads"].insert_many(
                [{"_id": rid, "at": opened + timedelta(hours=3), "status": [False, "DISCONNECTED", None],
                  "timezone": "UTC", "first_day": day.isoformat()} for rid in chunk]
            )  # fmt: skip
        result.timeline_docs = len(rids)
    finally:
        await client.close()


async def time_queries(settings: Settings, result: RankingResult, first: date, last: date) -> None:
    client = await open_mongo(settings)
    try:
        for _ in range(3):
            started = time.perf_counter()
            top = await offline_ranking(first, last, datetime.now(UTC), None, 100)
            result.top_s.append(time.perf_counter() - started)
        assert len(top) == min(100, result.restaurants), len(top)
        assert all(a.offline_seconds >= b.offline_seconds for a, b in itertools.pairwise(top))
        for _ in range(2):
            started = time.perf_counter()
            text = ranking_csv(await offline_ranking(first, last, datetime.now(UTC), None, None))
            result.csv_s.append(time.perf_counter() - started)
        result.csv_rows, result.csv_bytes = text.count("\n") - 1, len(text)
    finally:
        await client.close()


async def time_timeline(settings: Settings, rid: str, day: date) -> float:
    client = await open_mongo(settings)
    try:
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        began = time.perf_counter()
        spans = await restaurant_timeline(rid, start, start + timedelta(days=1), datetime.now(UTC), "UTC")
        elapsed = time.perf_counter() - began
        assert spans, "the timeline found the restaurant's day"
        return elapsed
    finally:
        await client.close()


def add_id_indexes(sqlite_file: Path, collections: list[str]) -> None:
    """The index FerretDB's `_id` lookups could use: on `->'$._id'`, the expression its queries say."""
    with sqlite3.connect(sqlite_file) as con:
        tables = dict(con.execute("SELECT name, table_name FROM _ferretdb_collections").fetchall())
        for name in collections:
            table = tables[name]
            expression = "_ferretdb_sjson->'$._id'"
            con.execute(f'CREATE UNIQUE INDEX IF NOT EXISTS "{table}_id_expr" ON "{table}" ({expression})')


def _http(port: int, path: str, token: str, accept: str) -> tuple[float, bytes]:
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}{path}", headers={"Authorization": f"Bearer {token}", "Accept": accept}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - started, body


def ranking_benchmark(restaurants: int, days: int = 30, keep: bool = False, http: bool = True) -> RankingResult:
    result = RankingResult(restaurants, days)
    now = datetime.now(UTC)
    last = now.date() - timedelta(days=1)
    first = last - timedelta(days=days - 1)
    with private_servers("ranking", keep) as servers:
        settings = servers.settings("ranking").model_copy(update={"mongo_db": DB})
        started = time.monotonic()
        asyncio.run(fill(settings, result, now))
        result.fill_s = time.monotonic() - started
        logger.info("filled %d rollups in %.1f s", result.rollups, result.fill_s)
        asyncio.run(time_queries(settings, result, first, last))
        if http:
            api = api_process(settings, servers.root)
            api.start()
            try:
                api.wait_ready(60)
                token = create_access_token(settings, Principal("bench", Role.SALES))
                path = f"/reports/offline-ranking?from={first}&to={last}"
                top = path + "&limit=100"
                _http(settings.api_port, top, token, "application/json")  # warm-up
                for _ in range(3):
                    result.http_top_s.append(_http(settings.api_port, top, token, "application/json")[0])
                for _ in range(2):
                    elapsed, body = _http(settings.api_port, path + "&limit=100000", token, "text/csv")
                    result.http_csv_s.append(elapsed)
                result.http_csv_rows = body.count(b"\n") - 1
            finally:
                api.stop()
        asyncio.run(fill_days(settings, result, now))
        rid = restaurant_ids(result.restaurants)[result.restaurants // 2]
        result.timeline_s = asyncio.run(time_timeline(settings, rid, last))
        try:
            add_id_indexes(servers.backends.ferretdb.data_dir / f"{DB}.sqlite", ["history_days", "history_heads"])
            result.timeline_indexed_s = asyncio.run(time_timeline(settings, rid, last))
        except (sqlite3.Error, KeyError) as exc:
            logger.warning("could not add the expression index (%s)", exc)
        asyncio.run(_drop(settings))
    return result


async def _drop(settings: Settings) -> None:
    client = await open_mongo(settings)
    try:
        await client.drop_database(DB)
    finally:
        await client.close()


def _best(values: list[float]) -> str:
    return f"{min(values):.2f} s (median {statistics.median(values):.2f} s of {len(values)})" if values else "-"


def ranking_rows(r: RankingResult) -> list[Row]:
    n, scale = r.restaurants, f"{r.restaurants:,} restaurants × {r.days} days"
    top_ok = r.top_s and statistics.median(r.top_s) <= GOAL_TOP_S
    csv_ok = r.csv_s and statistics.median(r.csv_s) <= GOAL_CSV_S
    rows = [
        Row("ranking", f"fill: {r.rollups:,} day rollups ({scale}), {r.ongoing:,} ongoing", f"{r.fill_s:.1f} s",
            "bulk inserts straight into FerretDB"),
        Row("ranking", f"top 100 ({scale}), query code", _best(r.top_s), f"goal ≤ {GOAL_TOP_S:.0f} s",
            "goal met" if top_ok else "goal missed"),
        Row("ranking", f"full CSV, {r.csv_rows:,} rows, {r.csv_bytes / 1e6:.1f} MB, query code", _best(r.csv_s),
            f"goal ≤ {GOAL_CSV_S:.0f} s", "goal met" if csv_ok else "goal missed"),
    ]  # fmt: skip
    if r.http_top_s and r.http_csv_s:
        rows += [
            Row("ranking", "top 100 over HTTP (uvicorn process, sales token)", _best(r.http_top_s),
                "API and FerretDB share the 2 cores"),
            Row("ranking", f"full CSV over HTTP ({r.http_csv_rows:,} rows)", _best(r.http_csv_s), "",
                "all rows" if r.http_csv_rows == n else f"expected {n:,}"),
        ]  # fmt: skip
    if r.timeline_s is not None:
        indexed = f"{r.timeline_indexed_s * 1000:.1f} ms" if r.timeline_indexed_s is not None else "-"
        rows.append(
            Row("ranking", f"1-day timeline read, {r.timeline_docs:,} day docs + heads in FerretDB",
                f"{r.timeline_s * 1000:.0f} ms", f"with an `_id` expression index: {indexed}",
                "FerretDB 1.24 scans on `_id`")
        )  # fmt: skip
    return rows
