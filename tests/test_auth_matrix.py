"""Every route of the app against missing, expired, forged and cross-restaurant tokens, on real servers.

The routes are enumerated from the app itself: a new route that is neither in PUBLIC nor in
PROTECTED fails `test_every_route_is_classified`, so none can escape this matrix.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.routing import BaseRoute, Mount
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.security import Principal, create_access_token
from core.documents import Restaurant, Role
from core.messages import utc_now
from core.settings import Settings
from tests.devices import ALWAYS_OPEN
from tests.helpers import wait_until

MINE, OTHER = "r-mine", "r-other"
NO_SUCH_UID = "0" * 24

# Reachable without a token, on purpose. Everything else must be in PROTECTED.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),  # the Prometheus scrape: counts and latencies, no restaurant data
    ("POST", "/auth/token"),
    ("GET", "/openapi.json"),
    ("HEAD", "/openapi.json"),
    ("GET", "/docs"),
    ("MOUNT", "/static/swagger-ui"),
    ("GET", "/"),
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/{page}"),
    ("GET", "/ui/config.json"),
    ("GET", "/ui/assets/{path:path}"),
    ("GET", "/ui/vendor/{package}/{path:path}"),
    ("GET", "/ui/restaurants/{rid}"),
}
# A sample request for each public route (any answer but 401/403 is right).
PUBLIC_SAMPLES = {
    ("GET", "/ui/{page}"): "/ui/login",
    ("GET", "/ui/assets/{path:path}"): "/ui/assets/app.js",
    ("GET", "/ui/vendor/{package}/{path:path}"): "/ui/vendor/mqtt/mqtt.min.js",
    ("GET", "/ui/restaurants/{rid}"): f"/ui/restaurants/{MINE}",
    ("MOUNT", "/static/swagger-ui"): "/static/swagger-ui/swagger-ui.css",
}


@dataclass(frozen=True)
class Rule:
    """Who may call a route: `own` (MINE's token on MINE's data), `other` (OTHER's token), sales, admin."""

    allowed: frozenset[str]
    json: Any = None
    query: dict[str, str] = field(default_factory=dict)


EVERYONE_BUT_OTHER = frozenset({"own", "sales", "admin"})
STAFF = frozenset({"sales", "admin"})
ADMIN = frozenset({"admin"})
MANAGERS = frozenset({"own", "admin"})  # sales only reads unavailabilities


def unavailability_body() -> dict[str, str]:
    return {"reason": "HOLIDAY", "start": "now", "end": (utc_now() + timedelta(hours=1)).isoformat()}


PROTECTED: dict[tuple[str, str], Rule] = {
    ("GET", "/restaurants/status"): Rule(EVERYONE_BUT_OTHER, query={"ids": MINE}),
    ("POST", "/restaurants/status/query"): Rule(EVERYONE_BUT_OTHER, json={"ids": [MINE]}),
    ("GET", "/restaurants/{restaurant_id}/status"): Rule(EVERYONE_BUT_OTHER),
    ("GET", "/restaurants/{restaurant_id}"): Rule(EVERYONE_BUT_OTHER),
    ("PATCH", "/restaurants/{restaurant_id}"): Rule(ADMIN, json={"group": "B"}),
    ("POST", "/restaurants/{restaurant_id}/unavailabilities"): Rule(MANAGERS, json="unavailability"),
    ("GET", "/restaurants/{restaurant_id}/unavailabilities"): Rule(EVERYONE_BUT_OTHER),
    ("GET", "/restaurants/{restaurant_id}/unavailabilities/{uid}"): Rule(EVERYONE_BUT_OTHER),
    ("DELETE", "/restaurants/{restaurant_id}/unavailabilities/{uid}"): Rule(MANAGERS),
    ("GET", "/restaurants/{restaurant_id}/timeline"): Rule(EVERYONE_BUT_OTHER),
    ("GET", "/reports/offline-ranking"): Rule(STAFF),
    ("POST", "/admin/restaurants"): Rule(ADMIN, json={"restaurant_id": "r-matrix-new"}),
    ("POST", "/admin/users"): Rule(
        ADMIN, json={"username": "matrix-user", "password": "long-password", "role": "sales"}
    ),
    ("WS", "/ws/dashboard"): Rule(STAFF),
}


def route_keys(routes: list[BaseRoute]) -> Iterator[tuple[str, str]]:
    """(method, path) of every route, routers included; websockets as WS, mounts as MOUNT."""
    try:  # FastAPI >= 0.160 keeps included routers as one entry each; this flattens them
        from fastapi.routing import iter_route_contexts

        flat: list[Any] = list(iter_route_contexts(routes))
    except ImportError:
        flat = list(routes)
    for route in flat:
        original = getattr(route, "original_route", route)
        path = route.path
        if isinstance(original, Mount):
            yield "MOUNT", path
        elif route.methods is None:
            yield "WS", path
        else:
            for method in route.methods:
                yield method, path


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    # Provisioning writes a password file of its own here, not the shared broker's.
    return settings.model_copy(update={"mosquitto_passwd_file": tmp_path / "passwd", "var_dir": tmp_path / "api"})


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    for rid in (MINE, OTHER):
        await Restaurant(restaurant_id=rid, secret_hash="-", mqtt_hash="-", hours=ALWAYS_OPEN).insert()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        yield client


def token(settings: Settings, who: str) -> str:
    principals = {
        "own": Principal(MINE, Role.RESTAURANT, restaurant_id=MINE),
        "other": Principal(OTHER, Role.RESTAURANT, restaurant_id=OTHER),
        "sales": Principal("carla", Role.SALES),
        "admin": Principal("root", Role.ADMIN),
    }
    return create_access_token(settings, principals[who])


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def signed(header: dict[str, Any], claims: dict[str, Any], key: str, digest: Any) -> str:
    """A JWT signed by hand (PyJWT warns about our key's length for HS512, which is beside the point)."""
    signing_input = f"{b64(header)}.{b64(claims)}"
    mac = hmac.new(key.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def forged_tokens(settings: Settings) -> dict[str, str | None]:
    """Bearer values that must all get 401 (None: no Authorization header at all)."""
    exp = int((utc_now() + timedelta(hours=1)).timestamp())
    admin_claims = {"sub": "root", "role": "admin", "exp": exp}
    good = token(settings, "other")
    header, _payload, signature = good.split(".")
    escalated = {"sub": OTHER, "role": "admin", "restaurant_id": MINE, "exp": exp}
    return {
        "missing": None,
        "garbage": "not-a-jwt",
        "empty": "",
        "expired": create_access_token(settings.model_copy(update={"token_ttl_s": -60}), Principal("root", Role.ADMIN)),
        "wrong key": jwt.encode(admin_claims, "a-different-secret-of-another-platform-xx", algorithm="HS256"),
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(admin_claims)}.",
        "alg none, signature kept": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(admin_claims)}.{signature}",
        "tampered claims": f"{header}.{b64(escalated)}.{signature}",
        "tampered signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "other algorithm": signed({"alg": "HS512", "typ": "JWT"}, admin_claims, settings.jwt_secret, hashlib.sha512),
        "unknown role": jwt.encode({**admin_claims, "role": "root"}, settings.jwt_secret, algorithm="HS256"),
        "restaurant without id": jwt.encode(
            {**admin_claims, "role": "restaurant"}, settings.jwt_secret, algorithm="HS256"
        ),
        "no expiry": jwt.encode({"sub": "root", "role": "admin"}, settings.jwt_secret, algorithm="HS256"),
    }


def request_of(key: tuple[str, str], rule: Rule) -> tuple[str, str, dict[str, Any]]:
    method, template = key
    path = template.format(restaurant_id=MINE, uid=NO_SUCH_UID)
    kwargs: dict[str, Any] = {"params": rule.query}
    if rule.json is not None:
        kwargs["json"] = unavailability_body() if rule.json == "unavailability" else rule.json
    return method, path, kwargs


HTTP_PROTECTED = sorted(key for key in PROTECTED if key[0] != "WS")


def test_every_route_is_classified() -> None:
    from api.main import create_app

    keys = set(route_keys(create_app(Settings()).routes))
    unclassified = keys - PUBLIC - set(PROTECTED)
    assert not unclassified, f"routes neither PUBLIC nor PROTECTED (add them to this matrix): {sorted(unclassified)}"
    gone = (PUBLIC | set(PROTECTED)) - keys
    assert not gone, f"routes in the matrix that the app no longer has: {sorted(gone)}"


@pytest.mark.parametrize("key", HTTP_PROTECTED, ids=lambda k: f"{k[0]} {k[1]}")
async def test_forged_and_missing_tokens_get_401(
    client: httpx.AsyncClient, settings: Settings, key: tuple[str, str]
) -> None:
    method, path, kwargs = request_of(key, PROTECTED[key])
    for name, bearer in forged_tokens(settings).items():
        headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
        response = await client.request(method, path, headers=headers, **kwargs)
        assert response.status_code == 401, (name, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer", name
        assert response.json()["detail"], name
    # A valid token under another scheme is no bearer token either.
    basic = {"Authorization": f"Basic {token(settings, 'admin')}"}
    assert (await client.request(method, path, headers=basic, **kwargs)).status_code == 401


@pytest.mark.parametrize("key", HTTP_PROTECTED, ids=lambda k: f"{k[0]} {k[1]}")
async def test_roles_and_cross_restaurant_tokens(
    client: httpx.AsyncClient, settings: Settings, key: tuple[str, str]
) -> None:
    rule = PROTECTED[key]
    method, path, kwargs = request_of(key, rule)
    refused = ("other", "own", "sales", "admin")
    # The refused ones first: an allowed call may change what the others would see.
    for who in sorted(refused, key=lambda w: w in rule.allowed):
        response = await client.request(method, path, headers={"Authorization": f"Bearer {token(settings, who)}"},
                                        **kwargs)  # fmt: skip
        if who in rule.allowed:
            assert response.status_code not in (401, 403), (who, response.text)
            assert response.status_code < 500, (who, response.text)
        else:
            assert response.status_code == 403, (who, response.text)
            assert response.json()["detail"], who


def test_cross_restaurant_token_is_refused_on_every_restaurant_route() -> None:
    # Whatever else a route allows, OTHER's token never reads or writes MINE.
    for key, rule in PROTECTED.items():
        assert "other" not in rule.allowed, key


@pytest.mark.parametrize("key", sorted(PUBLIC), ids=lambda k: f"{k[0]} {k[1]}")
async def test_public_routes_need_no_token(client: httpx.AsyncClient, key: tuple[str, str]) -> None:
    method, template = key
    path = PUBLIC_SAMPLES.get(key, template)
    if method == "MOUNT":
        method = "GET"
    data = {"username": MINE, "password": "wrong"} if path == "/auth/token" else None
    response = await client.request(method, path, data=data)
    assert response.status_code not in (403,), response.text
    assert response.status_code != 401 or path == "/auth/token"  # a wrong password is its 401
    assert response.status_code < 500 or (path == "/docs" and response.status_code == 503), response.text


@pytest.fixture
async def socket_url(app: FastAPI) -> AsyncIterator[str]:
    """The app (lifespan running) under uvicorn on a free loopback port: websockets need a real server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started or task.done(), message="uvicorn never started")
    try:
        yield f"ws://127.0.0.1:{port}/ws/dashboard"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


async def close_code(url: str) -> int | None:
    """The close code the server sends first, or None if it sends a frame instead."""
    async with connect(url) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else None
        return None


async def test_dashboard_socket_refuses_forged_tokens_and_restaurants(socket_url: str, settings: Settings) -> None:
    for name, bearer in forged_tokens(settings).items():
        url = socket_url if bearer is None else f"{socket_url}?token={bearer}"
        assert await close_code(url) == 4401, name
    for who in ("own", "other"):
        assert await close_code(f"{socket_url}?token={token(settings, who)}") == 4403, who
    for who in ("sales", "admin"):
        assert await close_code(f"{socket_url}?token={token(settings, who)}") not in (4401, 4403), who
