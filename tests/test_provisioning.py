"""Provisioning: hashed secrets in MongoDB and the password file, brokers that admit them, the CLI."""

import asyncio
import json
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core import provisioning
from core.db import open_mongo
from core.documents import Restaurant, User
from core.mqtt_passwords import read_password_file, verify_password
from core.provisioning import (
    ProvisioningError,
    RestaurantSpec,
    ensure_platform_user,
    provision_demo,
    provision_restaurants,
    provision_user,
    sync_password_file,
)
from core.secrets import verify_secret
from core.settings import Settings
from tests.helpers import wait_until
from tests.test_broker_acl import Probe

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[None]:
    client = await open_mongo(settings)
    yield
    await client.close()


@pytest.fixture
def private_passwd(settings: Settings, tmp_path: Path) -> Settings:
    """The same test namespace with a password file of its own, for tests that inspect or rewrite it."""
    return settings.model_copy(update={"mosquitto_passwd_file": tmp_path / "passwd"})


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def raw_documents(settings: Settings, collection: str) -> list[dict[str, Any]]:
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url)
    try:
        return await client[settings.mongo_db][collection].find({}).to_list()
    finally:
        await client.close()


async def can_connect(url: str, rid: str, secret: str) -> bool:
    probe = Probe(url, rid, secret, f"{rid}:tablet")
    try:
        return not (await probe.connect()).is_failure
    finally:
        probe.close()


async def test_secrets_are_stored_hashed_never_in_plaintext(mongo: None, private_passwd: Settings) -> None:
    settings = private_passwd
    specs = [RestaurantSpec(restaurant_id=f"hash-{n}-{tag()}", group="C") for n in range(3)]
    created = await provision_restaurants(settings, specs)
    assert [c["restaurant_id"] for c in created] == [s.restaurant_id for s in specs]
    assert {c["group"] for c in created} == {"C"}
    docs = {d["restaurant_id"]: d for d in await raw_documents(settings, "restaurants")}
    passwd = read_password_file(settings.mosquitto_passwd_file)
    for item in created:
        doc, secret = docs[item["restaurant_id"]], item["secret"]
        assert secret not in json.dumps(doc, default=str)
        assert doc["secret_hash"].startswith("$argon2id$") and verify_secret(doc["secret_hash"], secret)
        assert doc["mqtt_hash"].startswith("$7$") and verify_password(doc["mqtt_hash"], secret)
        assert doc["timezone"] == settings.default_timezone
        assert passwd[item["restaurant_id"]] == doc["mqtt_hash"]
    text = settings.mosquitto_passwd_file.read_text()
    assert not any(item["secret"] in text for item in created)
    assert stat.S_IMODE(settings.mosquitto_passwd_file.stat().st_mode) == 0o600


async def test_an_existing_id_needs_rotate_and_rotation_replaces_the_secret(
    mongo: None, private_passwd: Settings
) -> None:
    settings, rid = private_passwd, f"rot-{tag()}"
    [first] = await provision_restaurants(settings, [{"restaurant_id": rid, "group": "B"}])
    with pytest.raises(ProvisioningError, match="already exist"):
        await provision_restaurants(settings, [{"restaurant_id": rid}])
    [second] = await provision_restaurants(settings, [{"restaurant_id": rid, "group": "D"}], rotate=True)
    assert second["secret"] != first["secret"]
    assert second["group"] == "B"  # rotation keeps the profile
    doc = await Restaurant.find_one(Restaurant.restaurant_id == rid)
    assert doc is not None and doc.group == "B"
    assert verify_password(doc.mqtt_hash, second["secret"]) and not verify_password(doc.mqtt_hash, first["secret"])
    assert read_password_file(settings.mosquitto_passwd_file)[rid] == doc.mqtt_hash


async def test_batches_and_the_many_ids_lookup(
    mongo: None, private_passwd: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny batches, so that several insert_many calls and the whole-collection lookup both run."""
    monkeypatch.setattr(provisioning, "INSERT_BATCH", 2)
    settings, prefix = private_passwd, f"batch-{tag()}-"
    specs = [{"restaurant_id": f"{prefix}{n}", "group": "AB"[n % 2]} for n in range(5)]
    created = await provision_restaurants(settings, specs)
    assert await Restaurant.count() == 5
    with pytest.raises(ProvisioningError, match="5 restaurant"):
        await provision_restaurants(settings, specs)
    rotated = await provision_restaurants(settings, specs, rotate=True)
    assert [r["group"] for r in rotated] == [r["group"] for r in created] == ["A", "B", "A", "B", "A"]
    passwd = read_password_file(settings.mosquitto_passwd_file)
    for old, new in zip(created, rotated, strict=True):
        assert verify_password(passwd[new["restaurant_id"]], new["secret"])
        assert not verify_password(passwd[old["restaurant_id"]], old["secret"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"restaurant_id": "has space"}, "invalid restaurant id"),
        ({"restaurant_id": "x" * 65}, "invalid restaurant id"),
        ({"restaurant_id": "ok-id", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"restaurant_id": "ok-id", "group": "a/b"}, "invalid group"),
        ({"restaurant_id": "platform"}, "platform"),
        ({"restaurant_id": "status"}, "API's paths"),
    ],
)
async def test_invalid_requests_write_nothing(
    mongo: None, private_passwd: Settings, spec: dict[str, str], message: str
) -> None:
    settings = private_passwd.model_copy(update={"mqtt_username": "platform"})
    with pytest.raises(ProvisioningError, match=message):
        await provision_restaurants(settings, [spec])
    with pytest.raises(ProvisioningError, match="twice"):
        await provision_restaurants(settings, [{"restaurant_id": "dup"}, {"restaurant_id": "dup"}])
    assert await Restaurant.count() == 0
    assert not settings.mosquitto_passwd_file.exists()


async def test_a_new_restaurant_connects_to_mosquitto_after_reload_and_to_amqtt_at_once(
    mongo: None, settings: Settings, stack: Any
) -> None:
    rid = f"prov-{tag()}"
    [created] = await provision_restaurants(settings, [RestaurantSpec(restaurant_id=rid)])
    if stack.amqtt_url is not None:
        assert await can_connect(stack.amqtt_url, rid, created["secret"])  # it watches the file
    stack.reload_brokers()
    assert await can_connect(stack.mosquitto_url, rid, created["secret"])
    [rotated] = await provision_restaurants(settings, [RestaurantSpec(restaurant_id=rid)], rotate=True)
    stack.reload_brokers()
    for url in filter(None, (stack.mosquitto_url, stack.amqtt_url)):
        assert not await can_connect(url, rid, created["secret"])
        assert await can_connect(url, rid, rotated["secret"])


async def test_provisioning_signals_the_mosquitto_of_the_pid_file(mongo: None, settings: Settings, stack: Any) -> None:
    pid = getattr(stack.mosquitto, "pid", None)
    if pid is None:
        pytest.skip("this stack's Mosquitto was not started by the test session")
    (settings.var_dir / "run").mkdir(exist_ok=True)
    (settings.var_dir / "run" / "mosquitto.pid").write_text(f"{pid}\n")
    rid = f"hup-{tag()}"
    [created] = await provision_restaurants(settings, [RestaurantSpec(restaurant_id=rid)])
    await wait_until(lambda: can_connect(stack.mosquitto_url, rid, created["secret"]), message="Mosquitto reloaded")


async def test_a_stale_pid_file_is_not_signalled(mongo: None, private_passwd: Settings) -> None:
    bystander = await asyncio.create_subprocess_exec("sleep", "30")
    try:
        (private_passwd.var_dir / "run").mkdir(exist_ok=True)
        (private_passwd.var_dir / "run" / "mosquitto.pid").write_text(f"{bystander.pid}\n")
        await provision_restaurants(private_passwd, [RestaurantSpec(restaurant_id=f"stale-{tag()}")])
        assert bystander.returncode is None
        await asyncio.sleep(0)  # let a SIGHUP-ended child be reaped before looking again
        assert bystander.returncode is None
    finally:
        bystander.kill()
        await bystander.wait()


async def test_users_get_hashed_passwords_and_unique_names(mongo: None, private_passwd: Settings) -> None:
    settings, name = private_passwd, f"sales-{tag()}"
    made = await provision_user(settings, name, None, "sales")
    assert made["role"] == "sales" and len(made["password"]) >= 24
    [doc] = await raw_documents(settings, "users")
    assert made["password"] not in json.dumps(doc, default=str)
    assert verify_secret(doc["password_hash"], made["password"])
    with pytest.raises(ProvisioningError, match="already exists"):
        await provision_user(settings, name, "another-password", "admin")
    again = await provision_user(settings, name, "chosen-password-1", "admin", rotate=True)
    user = await User.find_one(User.username == name)
    assert user is not None and user.role == "admin" and verify_secret(user.password_hash, again["password"])
    with pytest.raises(ProvisioningError, match="unknown role"):
        await provision_user(settings, f"x-{tag()}", None, "owner")
    with pytest.raises(ProvisioningError, match="restaurant"):
        await provision_user(settings, f"x-{tag()}", None, "restaurant")
    rid = f"taken-{tag()}"
    await provision_restaurants(settings, [{"restaurant_id": rid}])
    with pytest.raises(ProvisioningError, match="already a restaurant"):
        await provision_user(settings, rid, None, "sales")
    with pytest.raises(ProvisioningError, match="already a user"):
        await provision_restaurants(settings, [{"restaurant_id": name}])


async def test_provision_demo_twice_is_idempotent(mongo: None, private_passwd: Settings) -> None:
    settings = private_passwd
    first = await provision_demo(settings, count=6)
    path = settings.var_dir / "demo-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == first
    assert [r["restaurant_id"] for r in first["restaurants"]] == [f"demo-000{n}" for n in range(1, 7)]
    assert [r["group"] for r in first["restaurants"]] == ["A", "B", "C", "D", "A", "B"]
    assert sorted((u["username"], u["role"]) for u in first["users"]) == [("admin", "admin"), ("sales", "sales")]
    passwd = read_password_file(settings.mosquitto_passwd_file)
    assert verify_password(passwd[settings.mqtt_username], settings.mqtt_password)

    assert await provision_demo(settings, count=6) == first
    assert await Restaurant.count() == 6 and await User.count() == 2

    # Lose one secret from the file and one restaurant from MongoDB: only those change.
    saved = json.loads(path.read_text())
    lost = saved["restaurants"].pop(1)
    path.write_text(json.dumps(saved))
    gone = first["restaurants"][2]
    await Restaurant.find_one(Restaurant.restaurant_id == gone["restaurant_id"]).delete()
    third = await provision_demo(settings, count=6)
    by_id = {r["restaurant_id"]: r for r in third["restaurants"]}
    assert by_id[lost["restaurant_id"]]["secret"] != lost["secret"]
    assert by_id[gone["restaurant_id"]] == gone  # recreated with the secret the file kept
    unchanged = [r for r in first["restaurants"] if r["restaurant_id"] not in (lost["restaurant_id"],)]
    assert all(by_id[r["restaurant_id"]] == r for r in unchanged)
    assert third["users"] == first["users"]
    passwd = read_password_file(settings.mosquitto_passwd_file)
    assert all(verify_password(passwd[r["restaurant_id"]], r["secret"]) for r in third["restaurants"])


async def test_sync_password_file_restores_every_entry(mongo: None, private_passwd: Settings) -> None:
    settings = private_passwd
    created = await provision_restaurants(settings, [{"restaurant_id": f"sync-{n}-{tag()}"} for n in range(3)])
    settings.mosquitto_passwd_file.write_text("someone-else:$7$101$abc$def\n")
    summary = await sync_password_file(settings)
    assert summary["restaurants"] == 3
    passwd = read_password_file(settings.mosquitto_passwd_file)
    assert all(verify_password(passwd[c["restaurant_id"]], c["secret"]) for c in created)
    assert verify_password(passwd[settings.mqtt_username], settings.mqtt_password)
    assert "someone-else" in passwd  # entries it does not manage are kept
    assert not await ensure_platform_user(settings)


async def run_cli(settings: Settings, *args: str) -> tuple[int, Any, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PRESENCE_")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        PRESENCE_MONGO_URL=settings.mongo_url,
        PRESENCE_MONGO_DB=settings.mongo_db,
        PRESENCE_VAR_DIR=str(settings.var_dir),
        PRESENCE_MOSQUITTO_PASSWD_FILE=str(settings.mosquitto_passwd_file),
        PRESENCE_MQTT_USERNAME=settings.mqtt_username,
        PRESENCE_MQTT_PASSWORD=settings.mqtt_password,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.cli", *args,
        cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    output = json.loads(stdout) if process.returncode == 0 else stdout.decode()
    assert process.returncode is not None
    return process.returncode, output, stderr.decode()


async def test_cli_prints_what_it_created_as_json(mongo: None, private_passwd: Settings) -> None:
    settings, rid = private_passwd, f"cli-{tag()}"
    code, made, _ = await run_cli(settings, "restaurant", "add", rid, "--group", "B", "--timezone", "Europe/Lisbon")
    assert code == 0 and made["restaurant_id"] == rid and made["group"] == "B"
    doc = await Restaurant.find_one(Restaurant.restaurant_id == rid)
    assert doc is not None and doc.timezone == "Europe/Lisbon" and verify_secret(doc.secret_hash, made["secret"])

    code, out, err = await run_cli(settings, "restaurant", "add", rid)
    assert code == 1 and out == "" and "already exist" in err

    code, bulk, _ = await run_cli(settings, "restaurant", "bulk", "--count", "3", "--prefix", "blk-", "--groups", "A,B")
    assert code == 0 and [(r["restaurant_id"], r["group"]) for r in bulk] == [
        ("blk-0001", "A"), ("blk-0002", "B"), ("blk-0003", "A"),
    ]  # fmt: skip

    code, user, _ = await run_cli(settings, "user", "add", f"ops-{tag()}", "--role", "admin", "--password", "pw-x-123")
    assert code == 0 and user["role"] == "admin" and user["password"] == "pw-x-123"

    code, summary, _ = await run_cli(settings, "sync-passwd")
    assert code == 0 and summary["restaurants"] == 4

    code, demo, _ = await run_cli(settings, "demo", "--count", "2")
    assert code == 0 and [r["restaurant_id"] for r in demo["restaurants"]] == ["demo-0001", "demo-0002"]

    code, out, err = await run_cli(settings, "restaurant", "add", "no good")
    assert code == 1 and "invalid restaurant id" in err
