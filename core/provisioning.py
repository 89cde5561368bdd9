"""Creating restaurants and users: MongoDB documents, the Mosquitto password file, demo credentials.

Every function expects Beanie to be initialised already (`core.db.open_mongo`): the console script
opens MongoDB itself, the API reuses its own connection. Redis is not touched: the bridge and the
API load a restaurant's profile from MongoDB when they first need it.
"""

import asyncio
import json
import logging
import os
import signal
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from beanie.operators import In, Set
from pydantic import BaseModel, Field, ValidationError
from pymongo.errors import BulkWriteError, DuplicateKeyError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.clock_queue import ClockQueue
from core.documents import Restaurant, Role, User
from core.errors import PresenceError
from core.hours import OpeningHours, zone
from core.ids import is_valid_id
from core.mqtt_passwords import hash_password, read_password_file, upsert_password_entries, verify_password
from core.presence_store import PresenceStore
from core.profiles import restaurant_profile
from core.secrets import hash_generated_secret, hash_secret, new_secret, verify_secret
from core.settings import Settings

logger = logging.getLogger(__name__)

INSERT_BATCH = 1000  # documents per insert_many
HASH_CHUNK = 50  # secrets hashed per thread hand-off: the hashes release the GIL, the hand-off costs
DEMO_GROUPS = ("A", "B", "C", "D")
DEMO_USERS = (("sales", Role.SALES), ("admin", Role.ADMIN))

T = TypeVar("T")


class ProvisioningError(PresenceError):
    """A provisioning request that cannot be carried out as asked; the message says why."""


class RestaurantSpec(BaseModel):
    restaurant_id: str
    group: str = "A"
    timezone: str | None = None  # None: Settings.default_timezone
    hours: OpeningHours | None = None  # None: the default 10:00–23:00 every day
    secret: str | None = None  # None: a new random one


class _Credentials(BaseModel):
    restaurant_id: str
    mqtt_hash: str


class _Stored(_Credentials):
    id: str = Field(alias="_id")
    group: str


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_spec(spec: RestaurantSpec | Mapping[str, Any]) -> RestaurantSpec:
    if isinstance(spec, RestaurantSpec):
        return spec
    try:
        return RestaurantSpec.model_validate(spec)
    except ValidationError as exc:
        raise ProvisioningError(f"invalid restaurant spec {dict(spec)!r}: {exc}") from exc


# /restaurants/status is the list query: a restaurant of that id could never be read at /restaurants/{rid}.
RESERVED_IDS = frozenset({"status"})


def _check_specs(settings: Settings, specs: Sequence[RestaurantSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        rid = spec.restaurant_id
        if not is_valid_id(rid):
            raise ProvisioningError(f"invalid restaurant id {rid!r}: use 1-64 of A-Z a-z 0-9 _ -")
        if rid == settings.mqtt_username:
            raise ProvisioningError(f"{rid!r} is the platform's MQTT user and cannot be a restaurant id")
        if rid in RESERVED_IDS:
            raise ProvisioningError(f"{rid!r} is a word of the API's paths (/restaurants/{rid}) and cannot be an id")
        if rid in seen:
            raise ProvisioningError(f"restaurant id {rid!r} is given twice")
        seen.add(rid)
        if not is_valid_id(spec.group):
            raise ProvisioningError(f"invalid group {spec.group!r} for {rid!r}: use 1-64 of A-Z a-z 0-9 _ -")
        try:
            zone(spec.timezone or settings.default_timezone)
        except ValueError as exc:
            raise ProvisioningError(f"{exc} for restaurant {rid!r}") from exc


async def _stored(ids: Sequence[str]) -> dict[str, _Stored]:
    """The restaurants among `ids` that exist already."""
    wanted = set(ids)
    # FerretDB's SQLite backend scans the whole collection for any filter but `_id`: for many ids,
    # one scan beats a scan per `$in` chunk.
    query = (
        Restaurant.find_all()
        if len(wanted) > INSERT_BATCH
        else Restaurant.find(In(Restaurant.id, list(wanted)))
    )
    return {row.restaurant_id: row async for row in query.project(_Stored) if row.restaurant_id in wanted}


def _hash_chunk(secrets: Sequence[tuple[str, bool]]) -> list[tuple[str, str]]:
    """(secret, generated) → (argon2 hash for the API, `$7$` hash for the brokers); runs in a thread."""
    return [
        (hash_generated_secret(secret) if generated else hash_secret(secret), hash_password(secret))
        for secret, generated in secrets
    ]


async def _hash_all(secrets: Sequence[tuple[str, bool]]) -> list[tuple[str, str]]:
    parts = await asyncio.gather(*(asyncio.to_thread(_hash_chunk, chunk) for chunk in _chunks(secrets, HASH_CHUNK)))
    return [pair for part in parts for pair in part]


def signal_mosquitto(settings: Settings) -> bool:
    """SIGHUP the local Mosquitto (`var/run/mosquitto.pid`) so it re-reads the password file."""
    pid_file = settings.var_dir / "run" / "mosquitto.pid"
    try:
        pid = int(pid_file.read_text().strip())
        # A stale pid file may name another process now, and SIGHUP would end most programs.
        comm = Path(f"/proc/{pid}/comm")
        if comm.exists() and comm.read_text().strip() != "mosquitto":
            logger.warning("pid %d in %s is not Mosquitto; not signalling it", pid, pid_file)
            return False
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        return False
    except (ValueError, ProcessLookupError, PermissionError) as exc:
        logger.warning("could not signal Mosquitto from %s: %s", pid_file, exc)
        return False
    logger.info("asked Mosquitto (pid %d) to reload its password file", pid)
    return True


async def _write_password_entries(settings: Settings, entries: dict[str, str]) -> None:
    # A 100,000-line file is rewritten whole: keep the event loop free meanwhile.
    await asyncio.to_thread(upsert_password_entries, settings.mosquitto_passwd_file, entries)
    signal_mosquitto(settings)


async def _mirror_profiles(settings: Settings, docs: Sequence[Restaurant]) -> None:
    """Put new profiles in Redis at once, so the bridge and the API know the restaurants right away.

    Best effort: with Redis away they are loaded from MongoDB at first use instead.
    """
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        store = PresenceStore(redis, settings.redis_prefix)
        await store.put_profiles({doc.restaurant_id: restaurant_profile(doc) for doc in docs})
        # Due at once: the scheduler settles each new restaurant and queues its next boundary.
        await ClockQueue(redis, settings.redis_prefix).mark_now(doc.restaurant_id for doc in docs)
    except RedisError as exc:
        logger.warning("profiles not mirrored to Redis (%s); they load from MongoDB at first use", exc)
    finally:
        await redis.aclose()


async def provision_restaurants(
    settings: Settings, specs: Iterable[RestaurantSpec | Mapping[str, Any]], *, rotate: bool = False
) -> list[dict[str, str]]:
    """Create restaurants with their secrets; an existing id is an error unless `rotate`.

    With `rotate`, an existing restaurant gets a new secret (or the given one) and keeps its profile.
    Returns `[{"restaurant_id", "secret", "group"}]` in the order given; the secrets are shown once.
    """
    wanted = [_as_spec(spec) for spec in specs]
    _check_specs(settings, wanted)
    ids = [spec.restaurant_id for spec in wanted]
    existing = await _stored(ids)
    if existing and not rotate:
        names = ", ".join(sorted(existing)[:5]) + (" …" if len(existing) > 5 else "")
        raise ProvisioningError(f"{len(existing)} restaurant(s) already exist: {names} (rotate to give new secrets)")
    for chunk in _chunks(ids, INSERT_BATCH):
        if user := await User.find_one(In(User.id, list(chunk))):
            raise ProvisioningError(f"{user.username!r} is already a user name; a restaurant id must differ")

    results: list[dict[str, str]] = []
    entries: dict[str, str] = {}
    try:
        for batch in _chunks(wanted, INSERT_BATCH):
            secrets = [spec.secret or new_secret() for spec in batch]
            hashes = await _hash_all(
                [(secret, spec.secret is None) for secret, spec in zip(secrets, batch, strict=True)]
            )
            new_docs: list[Restaurant] = []
            for spec, secret, (secret_hash, mqtt_hash) in zip(batch, secrets, hashes, strict=True):
                rid = spec.restaurant_id
                if rid in existing:
                    # By `_id`: the one filter FerretDB resolves without scanning the collection.
                    await Restaurant.find_one(Restaurant.id == existing[rid].id).update(
                        Set({Restaurant.secret_hash: secret_hash, Restaurant.mqtt_hash: mqtt_hash})
                    )
                    entries[rid] = mqtt_hash
                else:
                    new_docs.append(
                        Restaurant(
                            restaurant_id=rid,
                            secret_hash=secret_hash,
                            mqtt_hash=mqtt_hash,
                            group=spec.group,
                            timezone=spec.timezone or settings.default_timezone,
                            hours=spec.hours or OpeningHours(),
                        )
                    )
                group = existing[rid].group if rid in existing else spec.group
                results.append({"restaurant_id": rid, "secret": secret, "group": group})
            if new_docs:
                try:
                    await Restaurant.insert_many(new_docs)
                except (BulkWriteError, DuplicateKeyError) as exc:
                    raise ProvisioningError(f"a restaurant of this batch was created meanwhile: {exc}") from exc
                entries.update({doc.restaurant_id: doc.mqtt_hash for doc in new_docs})
                await _mirror_profiles(settings, new_docs)
    finally:
        # Whatever reached MongoDB must reach the brokers too, even when a later batch failed.
        if entries:
            await _write_password_entries(settings, entries)
    logger.info("provisioned %d restaurant(s) (%d rotated)", len(results), len(existing))
    return results


async def provision_user(
    settings: Settings, username: str, password: str | None, role: Role | str, *, rotate: bool = False
) -> dict[str, str]:
    """Create a `sales` or `admin` login (a new random password unless one is given)."""
    if not is_valid_id(username):
        raise ProvisioningError(f"invalid user name {username!r}: use 1-64 of A-Z a-z 0-9 _ -")
    try:
        user_role = Role(role)
    except ValueError as exc:
        raise ProvisioningError(f"unknown role {role!r}: use sales or admin") from exc
    if user_role is Role.RESTAURANT:
        raise ProvisioningError("restaurants log in with their id and secret; provision a restaurant instead")
    if username == settings.mqtt_username or await Restaurant.get(username):
        raise ProvisioningError(f"{username!r} is already a restaurant or the platform's MQTT user")
    existing = await User.get(username)
    if existing is not None and not rotate:
        raise ProvisioningError(f"user {username!r} already exists (rotate to set a new password)")
    password = password or new_secret()
    password_hash = await asyncio.to_thread(hash_secret, password)
    if existing is None:
        try:
            await User(username=username, password_hash=password_hash, role=user_role).insert()
        except DuplicateKeyError as exc:
            raise ProvisioningError(f"user {username!r} was created meanwhile") from exc
    else:
        await existing.set({User.password_hash: password_hash, User.role: user_role})
    logger.info("provisioned user %s (%s)", username, user_role.value)
    return {"username": username, "password": password, "role": user_role.value}


async def ensure_platform_user(settings: Settings) -> bool:
    """Put the platform's MQTT login in the password file; False when it was already there."""
    path = settings.mosquitto_passwd_file
    current = (await asyncio.to_thread(read_password_file, path)).get(settings.mqtt_username)
    if current is not None and verify_password(current, settings.mqtt_password):
        return False
    await _write_password_entries(settings, {settings.mqtt_username: hash_password(settings.mqtt_password)})
    return True


async def sync_password_file(settings: Settings) -> dict[str, Any]:
    """Write every restaurant's `mqtt_hash` and the platform login into the file (recovery)."""
    entries = {row.restaurant_id: row.mqtt_hash async for row in Restaurant.find_all().project(_Credentials)}
    current = (await asyncio.to_thread(read_password_file, settings.mosquitto_passwd_file)).get(settings.mqtt_username)
    if current is None or not verify_password(current, settings.mqtt_password):
        current = hash_password(settings.mqtt_password)
    entries[settings.mqtt_username] = current
    await _write_password_entries(settings, entries)
    return {
        "passwd_file": str(settings.mosquitto_passwd_file),
        "restaurants": len(entries) - 1,
        "platform_user": settings.mqtt_username,
    }


def demo_ids(count: int) -> list[str]:
    width = max(4, len(str(count)))
    return [f"demo-{n:0{width}d}" for n in range(1, count + 1)]


def _read_demo_credentials(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(restaurant id → secret, username → password) from an earlier run, or empty ones."""
    try:
        saved = json.loads(path.read_text())
        secrets = {r["restaurant_id"]: r["secret"] for r in saved.get("restaurants", [])}
        passwords = {u["username"]: u["password"] for u in saved.get("users", [])}
    except FileNotFoundError:
        return {}, {}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("ignoring unreadable %s (%s): missing credentials will be rotated", path, exc)
        return {}, {}
    return secrets, passwords


def write_private_json(path: Path, data: Any) -> None:
    """Replace `path` atomically with JSON readable by its owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    tmp.chmod(0o600)
    tmp.replace(path)


async def _demo_restaurants(settings: Settings, count: int, saved: dict[str, str]) -> list[dict[str, str]]:
    ids = demo_ids(count)
    stored = await _stored(ids)
    kept: dict[str, dict[str, str]] = {}
    create: list[RestaurantSpec] = []
    rotate: list[RestaurantSpec] = []
    for index, rid in enumerate(ids):
        group = DEMO_GROUPS[index % len(DEMO_GROUPS)]
        secret, doc = saved.get(rid), stored.get(rid)
        if doc is not None and secret is not None and verify_password(doc.mqtt_hash, secret):
            kept[rid] = {"restaurant_id": rid, "secret": secret, "group": doc.group}
        elif doc is not None:
            rotate.append(RestaurantSpec(restaurant_id=rid, group=group))
        else:
            create.append(RestaurantSpec(restaurant_id=rid, group=group, secret=secret))
    made = await provision_restaurants(settings, create) if create else []
    made += await provision_restaurants(settings, rotate, rotate=True) if rotate else []
    # Kept ones may still be missing from the password file (deleted, or a new var/ directory).
    in_file = await asyncio.to_thread(read_password_file, settings.mosquitto_passwd_file)
    missing = {rid: stored[rid].mqtt_hash for rid in kept if in_file.get(rid) != stored[rid].mqtt_hash}
    if missing:
        await _write_password_entries(settings, missing)
    by_id = kept | {item["restaurant_id"]: item for item in made}
    return [by_id[rid] for rid in ids]


async def _demo_users(settings: Settings, saved: dict[str, str]) -> list[dict[str, str]]:
    users: list[dict[str, str]] = []
    for username, role in DEMO_USERS:
        password, user = saved.get(username), await User.get(username)
        if (
            user is not None
            and password is not None
            and user.role == role
            and await asyncio.to_thread(verify_secret, user.password_hash, password)
        ):
            users.append({"username": username, "password": password, "role": role.value})
        else:
            rotate = user is not None  # a password we no longer know: set a new one
            users.append(await provision_user(settings, username, None if rotate else password, role, rotate=rotate))
    return users


async def provision_demo(settings: Settings, count: int = 200) -> dict[str, Any]:
    """`demo-0001`… in groups A–D plus a sales and an admin login, kept across runs.

    What `var/demo-credentials.json` already holds and MongoDB confirms is reused; only what is
    missing gets a new secret. The file is rewritten (mode 0600) and the result returned.
    """
    if count < 1:
        raise ProvisioningError("the demo needs at least one restaurant")
    path = settings.var_dir / "demo-credentials.json"
    saved_secrets, saved_passwords = await asyncio.to_thread(_read_demo_credentials, path)
    await ensure_platform_user(settings)
    credentials = {
        "restaurants": await _demo_restaurants(settings, count, saved_secrets),
        "users": await _demo_users(settings, saved_passwords),
    }
    await asyncio.to_thread(write_private_json, path, credentials)
    logger.info("demo credentials for %d restaurants written to %s", count, path)
    return credentials
