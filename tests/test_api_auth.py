"""POST /auth/token, bearer checks (401/403) and the admin provisioning endpoints, on real servers."""

from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from fastapi import FastAPI

from api.security import InvalidToken, Principal, create_access_token, decode_access_token
from core.documents import Restaurant, Role, User
from core.messages import utc_now
from core.secrets import hash_secret
from core.settings import Settings
from tests.devices import ALWAYS_OPEN
from tests.helpers import wait_until


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        yield client


async def add_restaurant(restaurant_id: str, secret: str) -> None:
    await Restaurant(
        restaurant_id=restaurant_id, secret_hash=hash_secret(secret), mqtt_hash="-", hours=ALWAYS_OPEN
    ).insert()


async def add_user(username: str, password: str, role: Role) -> None:
    await User(username=username, password_hash=hash_secret(password), role=role).insert()


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/auth/token", data={"username": username, "password": password})


def bearer(settings: Settings, principal: Principal) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_access_token(settings, principal)}"}


async def test_restaurant_logs_in_with_its_secret(client: httpx.AsyncClient, settings: Settings) -> None:
    await add_restaurant("r-login", "s3cret-of-r")

    response = await login(client, "r-login", "s3cret-of-r")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.token_ttl_s
    claims = jwt.decode(body["access_token"], settings.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == "r-login"
    assert claims["role"] == "restaurant"
    assert claims["restaurant_id"] == "r-login"
    assert claims["exp"] > claims["iat"]
    status = await client.get(
        "/restaurants/r-login/status", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert status.status_code == 200, status.text


async def test_sales_user_logs_in_and_reads_any_restaurant(client: httpx.AsyncClient, settings: Settings) -> None:
    await add_restaurant("r-any", "secret-any")
    await add_user("carla", "carla-password", Role.SALES)

    response = await login(client, "carla", "carla-password")

    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    claims = jwt.decode(token, settings.jwt_secret, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("carla", "sales")
    assert "restaurant_id" not in claims
    status = await client.get("/restaurants/r-any/status", headers={"Authorization": f"Bearer {token}"})
    assert status.status_code == 200, status.text


@pytest.mark.parametrize(
    ("username", "password"),
    [("r-wrong", "not-the-secret"), ("nobody", "whatever"), ("dora", "wrong-password"), ("bad id!", "x")],
)
async def test_wrong_credentials_get_401(client: httpx.AsyncClient, username: str, password: str) -> None:
    await add_restaurant("r-wrong", "the-secret")
    await add_user("dora", "dora-password", Role.ADMIN)

    response = await login(client, username, password)

    assert response.status_code == 401
    assert response.json() == {"detail": "incorrect username or password"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_login_form_without_password_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/auth/token", data={"username": "someone"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "password"]


async def test_missing_bad_and_expired_tokens_get_401(client: httpx.AsyncClient, settings: Settings) -> None:
    await add_restaurant("r-guarded", "secret-guarded")
    sales = Principal("sales", Role.SALES)
    expired = settings.model_copy(update={"token_ttl_s": -60})
    foreign = settings.model_copy(update={"jwt_secret": "a-different-secret-of-another-platform"})
    cases = {
        "no token": ({}, "Not authenticated"),
        "not a jwt": ({"Authorization": "Bearer not-a-jwt"}, "invalid token"),
        "expired": (bearer(expired, sales), "token expired"),
        "other signer": (bearer(foreign, sales), "invalid token"),
    }
    for name, (headers, detail) in cases.items():
        for path in ("/restaurants/r-guarded/status", "/restaurants/status?ids=r-guarded"):
            response = await client.get(path, headers=headers)
            assert response.status_code == 401, (name, path, response.text)
            assert response.json() == {"detail": detail}, name
            assert response.headers["WWW-Authenticate"] == "Bearer", name


async def test_a_token_remembered_as_verified_still_expires_and_keeps_to_its_secret(settings: Settings) -> None:
    # Tokens are checked once and remembered (api/security.py): the memory must not outlive the token,
    # nor let a token signed with one secret through where another is configured.
    short = settings.model_copy(update={"token_ttl_s": 1})
    token = create_access_token(short, Principal("sales", Role.SALES))
    principal = decode_access_token(short, token)
    assert principal.role is Role.SALES and decode_access_token(short, token) is principal
    other = settings.model_copy(update={"jwt_secret": "a-different-secret-of-another-platform"})
    with pytest.raises(InvalidToken, match="invalid token"):
        decode_access_token(other, token)
    assert principal.expires_at is not None
    await wait_until(lambda: utc_now() >= principal.expires_at, timeout=5, message="the token never expired")
    with pytest.raises(InvalidToken, match="token expired"):
        decode_access_token(short, token)


async def test_token_without_role_claim_gets_401(client: httpx.AsyncClient, settings: Settings) -> None:
    token = jwt.encode({"sub": "x", "exp": 4_000_000_000}, settings.jwt_secret, algorithm="HS256")

    response = await client.get("/restaurants/status?ids=a", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


async def test_restaurant_token_reads_only_its_own_restaurant(client: httpx.AsyncClient, settings: Settings) -> None:
    await add_restaurant("r-mine", "secret-mine")
    await add_restaurant("r-other", "secret-other")
    token = (await login(client, "r-mine", "secret-mine")).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    assert (await client.get("/restaurants/r-mine/status", headers=headers)).status_code == 200
    other = await client.get("/restaurants/r-other/status", headers=headers)
    assert other.status_code == 403
    assert "own restaurant" in other.json()["detail"]
    # Not even whether an id exists leaks to another restaurant.
    assert (await client.get("/restaurants/r-ghost/status", headers=headers)).status_code == 403
    batch = await client.post("/restaurants/status/query", json={"ids": ["r-mine", "r-other"]}, headers=headers)
    assert batch.status_code == 403
    assert (await client.get("/restaurants/status?ids=r-other", headers=headers)).status_code == 403
    own = await client.post("/restaurants/status/query", json={"ids": ["r-mine", "r-mine"]}, headers=headers)
    assert own.status_code == 200, own.text
    assert [s["restaurant_id"] for s in own.json()["statuses"]] == ["r-mine"]


async def test_admin_provisions_a_restaurant_that_can_log_in(client: httpx.AsyncClient, settings: Settings) -> None:
    admin = bearer(settings, Principal("root", Role.ADMIN))

    response = await client.post(
        "/admin/restaurants",
        json={"restaurant_id": "r-new", "group": "B", "timezone": "Europe/Lisbon"},
        headers=admin,
    )

    assert response.status_code == 201, response.text
    created = response.json()
    assert created["restaurant_id"] == "r-new"
    assert created["group"] == "B"
    assert created["timezone"] == "Europe/Lisbon"
    doc = await Restaurant.find_one(Restaurant.restaurant_id == "r-new")
    assert doc is not None and doc.timezone == "Europe/Lisbon"
    assert (await login(client, "r-new", created["secret"])).status_code == 200
    assert "r-new:" in settings.mosquitto_passwd_file.read_text()

    again = await client.post("/admin/restaurants", json={"restaurant_id": "r-new"}, headers=admin)
    assert again.status_code == 409
    assert "already exist" in again.json()["detail"]


async def test_admin_restaurant_body_is_validated(client: httpx.AsyncClient, settings: Settings) -> None:
    admin = bearer(settings, Principal("root", Role.ADMIN))

    for body, field in [
        ({"restaurant_id": "no spaces"}, "restaurant_id"),
        ({"restaurant_id": "r-tz", "timezone": "Mars/Olympus"}, "timezone"),
        ({"restaurant_id": "r-g", "group": "a/b"}, "group"),
    ]:
        response = await client.post("/admin/restaurants", json=body, headers=admin)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][-1] == field


async def test_admin_creates_users(client: httpx.AsyncClient, settings: Settings) -> None:
    admin = bearer(settings, Principal("root", Role.ADMIN))

    response = await client.post(
        "/admin/users", json={"username": "eve", "password": "eve-password", "role": "sales"}, headers=admin
    )

    assert response.status_code == 201, response.text
    assert response.json() == {"username": "eve", "role": "sales"}
    token = (await login(client, "eve", "eve-password")).json()["access_token"]
    assert jwt.decode(token, settings.jwt_secret, algorithms=["HS256"])["role"] == "sales"
    duplicate = await client.post(
        "/admin/users", json={"username": "eve", "password": "other-password", "role": "admin"}, headers=admin
    )
    assert duplicate.status_code == 409
    restaurant_role = await client.post(
        "/admin/users", json={"username": "rr", "password": "rr-password", "role": "restaurant"}, headers=admin
    )
    assert restaurant_role.status_code == 422


async def test_only_admin_provisions(client: httpx.AsyncClient, settings: Settings) -> None:
    for principal in (Principal("carla", Role.SALES), Principal("r1", Role.RESTAURANT, restaurant_id="r1")):
        headers = bearer(settings, principal)
        restaurant = await client.post("/admin/restaurants", json={"restaurant_id": "r-x"}, headers=headers)
        user = await client.post(
            "/admin/users", json={"username": "u", "password": "u-password", "role": "admin"}, headers=headers
        )
        assert (restaurant.status_code, user.status_code) == (403, 403), principal
        assert restaurant.json() == {"detail": "requires role admin"}
    assert (await client.post("/admin/restaurants", json={"restaurant_id": "r-x"})).status_code == 401
    assert await Restaurant.find_one(Restaurant.restaurant_id == "r-x") is None


async def test_redis_away_is_a_503_that_says_so(app: FastAPI, client: httpx.AsyncClient) -> None:
    # Seen in the Redis fault run: a login while Redis restarted was a 500 with a traceback.
    from redis.asyncio import Redis

    live, away = app.state.redis, Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    app.state.redis = away  # the login limiter's Redis refuses connections
    try:
        response = await login(client, "r-any", "whatever")
    finally:
        app.state.redis = live
        await away.aclose()
    assert response.status_code == 503, response.text
    assert "Redis" in response.json()["detail"] and response.headers["Retry-After"] == "1"
