"""The FerretDB that scripts/install.sh builds looks documents up by `_id` through the `_id` index.

Unpatched FerretDB 1.24 (SQLite) compares `_id` in a form its `_id` index does not have, so SQLite scans
the table; and an update command of 100 or more statements never answers. scripts/ferretdb/*.patch fixes
both and pushes `{_id: {$in: [...]}}` down too. FerretDB's `explain` reports SQLite's own plan for the
query it runs, so the tests read the index use from there and check the named index in the SQLite file.
"""

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient, UpdateOne
from pymongo.database import Database

from stack.services import FerretDB, free_port

DOCS = 20_000
DB = "index_probe"


@pytest.fixture(scope="module")
def ferretdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerretDB]:
    server = FerretDB(tmp_path_factory.mktemp("ferretdb"), free_port())
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def db(ferretdb: FerretDB) -> Iterator[Database[dict[str, Any]]]:
    # A bounded socket timeout: an update command that never answers fails the test instead of hanging it.
    client: MongoClient[dict[str, Any]] = MongoClient(ferretdb.url, socketTimeoutMS=30_000)
    try:
        yield client[DB]
    finally:
        client.close()


@pytest.fixture(scope="module")
def object_ids(db: Database[dict[str, Any]]) -> list[ObjectId]:
    ids = [ObjectId() for _ in range(DOCS)]
    for start in range(0, DOCS, 1000):
        db.docs.insert_many([{"_id": ids[i], "n": i} for i in range(start, min(start + 1000, DOCS))])
    db.names.insert_many([{"_id": f"r{i:05d}", "n": i} for i in range(2000)])
    return ids


def plan(db: Database[dict[str, Any]], collection: str, query: dict[str, Any]) -> tuple[bool, str]:
    """(filter pushed down to SQL, SQLite's query plan) of a find as FerretDB runs it."""
    answer = db.command("explain", {"find": collection, "filter": query}, verbosity="queryPlanner")
    return bool(answer.get("filterPushdown")), "\n".join(answer["queryPlanner"]["Plan"])


def id_index(ferretdb: FerretDB, collection: str) -> tuple[str, str]:
    """(name, SQL) of the collection's unique `_id` index, read from FerretDB's SQLite file."""
    sqlite = sqlite3.connect(f"file:{Path(ferretdb.data_dir, DB + '.sqlite')}?mode=ro", uri=True)
    try:
        (table,) = sqlite.execute(
            "SELECT table_name FROM _ferretdb_collections WHERE name = ?", [collection]
        ).fetchone()
        name = f"{table}__id_"  # FerretDB names an index <table>_<index name>; the _id index is "_id_"
        (sql,) = sqlite.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", [name]).fetchone()
        return name, sql
    finally:
        sqlite.close()


@pytest.mark.parametrize(
    ("collection", "pick"),
    [("docs", lambda ids: ids[DOCS // 2]), ("names", lambda _ids: "r01234")],
    ids=["objectid", "string"],
)
def test_lookup_by_id_searches_the_id_index(
    ferretdb: FerretDB, db: Database[dict[str, Any]], object_ids: list[ObjectId], collection: str, pick: Any
) -> None:
    wanted = pick(object_ids)
    index_name, index_sql = id_index(ferretdb, collection)
    assert index_sql.startswith("CREATE UNIQUE INDEX")

    pushed, query_plan = plan(db, collection, {"_id": wanted})

    assert pushed
    assert f"SEARCH {index_name.removesuffix('__id_')} USING INDEX {index_name} (<expr>=?)" in query_plan
    assert "SCAN" not in query_plan
    found = db[collection].find_one({"_id": wanted})
    assert found is not None and found["_id"] == wanted


@pytest.mark.parametrize(
    ("make_query", "found"),
    [
        (lambda ids: {"_id": {"$in": [ids[7], ids[-1], ids[7], ObjectId()]}}, [7, DOCS - 1]),  # a repeat, an absent
        (lambda ids: {"_id": ids[7], "n": {"$gte": 7}}, [7]),  # _id beside another condition (conditional update)
        (lambda ids: {"_id": ids[7], "n": {"$gt": 7}}, []),
    ],
    ids=["in", "and-equal", "and-equal-no-match"],
)
def test_other_id_filters_search_the_id_index(
    ferretdb: FerretDB, db: Database[dict[str, Any]], object_ids: list[ObjectId], make_query: Any, found: list[int]
) -> None:
    query = make_query(object_ids)
    index_name, _sql = id_index(ferretdb, "docs")

    pushed, query_plan = plan(db, "docs", query)

    assert pushed
    assert f"USING INDEX {index_name}" in query_plan
    assert "SCAN" not in query_plan
    assert sorted(d["n"] for d in db.docs.find(query)) == found


def test_filters_left_to_ferretdb_still_answer_right(db: Database[dict[str, Any]], object_ids: list[ObjectId]) -> None:
    # Mixed types are not pushed down; and the pushdown only narrows: FerretDB checks the whole filter.
    assert sorted(d["_id"] for d in db.names.find({"_id": {"$in": ["r00003", 5, "absent"]}})) == ["r00003"]
    assert db.docs.find_one({"_id": {"$in": [str(object_ids[3])]}}) is None  # a string is not an ObjectId
    assert db.docs.find_one({"_id": str(object_ids[3])}) is None


def test_update_command_of_many_statements_answers(db: Database[dict[str, Any]], object_ids: list[ObjectId]) -> None:
    targets = object_ids[:150]
    upserts = [f"new{i}" for i in range(30)]
    ops = [UpdateOne({"_id": oid}, {"$set": {"touched": True}}) for oid in targets]
    ops += [UpdateOne({"_id": rid}, {"$set": {"touched": True}}, upsert=True) for rid in upserts]

    result = db.docs.bulk_write(ops, ordered=False)

    assert (result.matched_count, result.modified_count, result.upserted_count) == (150, 150, 30)
    assert db.docs.count_documents({"touched": True}) == 180
