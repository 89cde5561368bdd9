"""POST /auth/token limits failed attempts per username and per client IP (Redis), on real servers."""

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from api.main import create_app
from core.documents import Restaurant, Role, User
from core.secrets import hash_secret
from core.settings import Settings
from tests.devices import ALWAYS_OPEN

LIMIT, WINDOW_S = 3, 60
Login = Callable[[str, str, str], Awaitable[httpx.Response]]


@pytest.fixture
async def limited_app(settings: Settings) -> AsyncIterator[FastAPI]:
    api = create_app(settings.model_copy(update={"login_max_failures": LIMIT, "login_failure_window_s": WINDOW_S}))
    async with api.router.lifespan_context(api):
        await Restaurant(
            restaurant_id="r-lim", secret_hash=hash_secret("secret-of-r"), mqtt_hash="-", hours=ALWAYS_OPEN
        ).insert()
        await User(username="sam", password_hash=hash_secret("sam-password"), role=Role.SALES).insert()
        yield api


@pytest.fixture
def login(limited_app: FastAPI) -> Login:
    """POST /auth/token as if from client IP `ip`."""

    async def post(ip: str, username: str, password: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=limited_app, client=(ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            return await client.post("/auth/token", data={"username": username, "password": password})

    return post


def assert_limited(response: httpx.Response, by: str) -> None:
    assert response.status_code == 429, response.text
    assert f"too many failed logins for this {by}" in response.json()["detail"]
    assert 0 < int(response.headers["Retry-After"]) <= WINDOW_S


async def test_guesses_at_one_username_are_limited_whatever_their_ip(login: Login) -> None:
    for n in range(LIMIT):
        assert (await login(f"10.0.0.{n}", "r-lim", "guess")).status_code == 401
    # Even the right secret is refused now, from a new IP too: the answer must not tell whether it was right.
    assert_limited(await login("10.0.0.99", "r-lim", "secret-of-r"), "username")
    # Those IPs each failed once only: they may still log in as someone else.
    assert (await login("10.0.0.0", "sam", "sam-password")).status_code == 200


async def test_one_ip_spraying_usernames_is_limited(login: Login) -> None:
    for name in ("alice", "bob", "carol"):
        assert (await login("10.0.1.1", name, "guess")).status_code == 401
    assert_limited(await login("10.0.1.1", "sam", "sam-password"), "client")
    assert (await login("10.0.1.2", "sam", "sam-password")).status_code == 200
    # Names that cannot exist are counted against the IP only (no Redis key per invented name).
    for _ in range(LIMIT):
        assert (await login("10.0.1.3", "no such name!", "x")).status_code == 401
    assert_limited(await login("10.0.1.3", "no such name!", "x"), "client")


async def test_a_success_forgets_only_its_own_ips_failures(login: Login, settings: Settings) -> None:
    assert (await login("10.0.2.1", "sam", "guess")).status_code == 401  # the owner's typo
    assert (await login("10.0.2.2", "sam", "guess")).status_code == 401  # an attacker
    # The owner logs in: its own typo is forgotten, the attacker's failure is not.
    assert (await login("10.0.2.1", "sam", "sam-password")).status_code == 200
    assert (await login("10.0.2.3", "sam", "guess")).status_code == 401
    assert (await login("10.0.2.2", "sam", "guess")).status_code == 401  # 2 + 1 = LIMIT
    assert_limited(await login("10.0.2.1", "sam", "sam-password"), "username")

    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        key = f"{settings.redis_prefix}login:u:sam"
        assert await redis.hgetall(key) == {"10.0.2.2": "2", "10.0.2.3": "1"}
        assert 0 < await redis.ttl(key) <= WINDOW_S  # the window ends: the count goes with it
    finally:
        await redis.aclose()


async def test_failures_under_the_limit_do_not_block(login: Login) -> None:
    for _ in range(LIMIT - 1):
        assert (await login("10.0.3.1", "r-lim", "guess")).status_code == 401
    assert (await login("10.0.3.1", "r-lim", "secret-of-r")).status_code == 200
    assert (await login("10.0.3.1", "r-lim", "guess")).status_code == 401  # the IP is at LIMIT now
    assert_limited(await login("10.0.3.1", "r-lim", "secret-of-r"), "client")
