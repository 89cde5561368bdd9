"""Failed logins counted in Redis, per username and per client IP: guessing secrets gets 429, not answers.

Per username the failures are kept per IP (one hash field each), so a successful login forgets the
failures of its own IP only: an attacker elsewhere keeps his count, and a login by the real owner
cannot wipe it. The per-IP count is never reset by a success (one valid account must not buy another
round of guesses against the others). Counts live for one window from the first failure.
"""

import math
from dataclasses import dataclass

from fastapi import Request
from redis.asyncio import Redis

from core.ids import is_valid_id
from core.settings import Settings


@dataclass(frozen=True, slots=True)
class Blocked:
    """Too many failures: try again in `retry_after_s`."""

    retry_after_s: int
    by: str  # "username" or "client"


class LoginLimiter:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.prefix = f"{settings.redis_prefix}login:"
        self.max_failures = settings.login_max_failures
        self.window_s = settings.login_failure_window_s

    def _user_key(self, username: str) -> str | None:
        # Only names that could exist get a key: anything else would let a client invent keys at will.
        return f"{self.prefix}u:{username}" if is_valid_id(username) else None

    def _ip_key(self, client_ip: str) -> str:
        return f"{self.prefix}ip:{client_ip[:64]}"

    async def check(self, username: str, client_ip: str) -> Blocked | None:
        """Blocked when the username or the client IP reached the limit within the window."""
        user_key, ip_key = self._user_key(username), self._ip_key(client_ip)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(ip_key)
            pipe.pttl(ip_key)
            if user_key is not None:
                pipe.hvals(user_key)
                pipe.pttl(user_key)
            replies = await pipe.execute()
        if int(replies[0] or 0) >= self.max_failures:
            return Blocked(self._seconds(replies[1]), "client")
        if user_key is not None and sum(int(v) for v in replies[2]) >= self.max_failures:
            return Blocked(self._seconds(replies[3]), "username")
        return None

    async def failed(self, username: str, client_ip: str) -> None:
        user_key, ip_key = self._user_key(username), self._ip_key(client_ip)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(ip_key)
            pipe.expire(ip_key, self.window_s, nx=True)
            if user_key is not None:
                pipe.hincrby(user_key, client_ip[:64], 1)
                pipe.expire(user_key, self.window_s, nx=True)
            await pipe.execute()

    async def succeeded(self, username: str, client_ip: str) -> None:
        """Forget this IP's failures against this username; other IPs' stay."""
        user_key = self._user_key(username)
        if user_key is not None:
            await self.redis.hdel(user_key, client_ip[:64])

    def _seconds(self, pttl_ms: int) -> int:
        # -1 (no expiry) cannot happen as keys are written with one; fall back to the whole window.
        return max(1, math.ceil(pttl_ms / 1000)) if pttl_ms > 0 else self.window_s


async def get_login_limiter(request: Request) -> LoginLimiter:
    return LoginLimiter(request.app.state.redis, request.app.state.settings)


def client_ip(request: Request) -> str:
    """The peer address (behind a proxy, run uvicorn with --proxy-headers so this is the real client)."""
    return request.client.host if request.client is not None else "unknown"
