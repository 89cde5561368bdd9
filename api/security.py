"""Bearer tokens: HS256 JWTs carrying `sub`, `role`, `exp` (and `restaurant_id` for restaurants)."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import jwt

from core.documents import Role
from core.errors import PresenceError
from core.messages import utc_now
from core.settings import Settings


class InvalidToken(PresenceError):
    """A bearer token that is malformed, badly signed, expired or missing a claim."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a restaurant (its own id only) or a sales/admin user."""

    subject: str
    role: Role
    restaurant_id: str | None = None
    expires_at: datetime | None = field(default=None, compare=False)  # of the token it came from

    def can_read(self, restaurant_id: str) -> bool:
        return self.can_read_all((restaurant_id,))

    def can_read_all(self, restaurant_ids: Sequence[str]) -> bool:
        # Once per status batch: sales and admin without a look at each of the 10,000 ids.
        return self.role is not Role.RESTAURANT or all(rid == self.restaurant_id for rid in restaurant_ids)


def create_access_token(settings: Settings, principal: Principal) -> str:
    now = utc_now()
    claims: dict[str, object] = {
        "sub": principal.subject,
        "role": principal.role.value,
        "iat": now,
        "exp": now + timedelta(seconds=settings.token_ttl_s),
    }
    if principal.restaurant_id is not None:
        claims["restaurant_id"] = principal.restaurant_id
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithm)


VERIFIED_MAX = 10_000  # tokens remembered as verified; past it the memory starts again empty
_verified: dict[tuple[str, str, str], Principal] = {}


def decode_access_token(settings: Settings, token: str) -> Principal:
    """The principal of a valid token, or `InvalidToken` saying what is wrong with it.

    A token is checked once and its principal remembered until it expires: the same string with the
    same secret always decodes the same (its signature covers every claim), and checking it again cost
    ~0.2 ms on every status batch of a client that holds its token for an hour.
    """
    key = (settings.jwt_secret, settings.jwt_algorithm, token)
    known = _verified.get(key)
    if known is not None and known.expires_at is not None and utc_now() < known.expires_at:
        return known
    principal = _decode(settings, token)  # an expired one says so, as the first time
    if len(_verified) >= VERIFIED_MAX:
        _verified.clear()
    _verified[key] = principal
    return principal


def _decode(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[settings.jwt_algorithm],
            options={"require": ["sub", "role", "exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken("invalid token") from exc
    try:
        role = Role(claims["role"])
    except ValueError as exc:
        raise InvalidToken("invalid token role") from exc
    restaurant_id = claims.get("restaurant_id")
    if role is Role.RESTAURANT and not isinstance(restaurant_id, str):
        raise InvalidToken("restaurant token without restaurant_id")
    expires_at = datetime.fromtimestamp(int(claims["exp"]), UTC)
    return Principal(subject=str(claims["sub"]), role=role, restaurant_id=restaurant_id, expires_at=expires_at)
