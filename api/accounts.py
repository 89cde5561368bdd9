"""Logins against MongoDB: restaurant id + secret, or user + password (argon2, off the event loop)."""

import asyncio

from api.security import Principal
from core.documents import Restaurant, Role, User
from core.ids import is_valid_id
from core.secrets import verify_secret


async def _verify(secret_hash: str, secret: str) -> bool:
    # Argon2 is built to be slow (tens of ms of CPU): in the loop it would stall every request.
    return await asyncio.to_thread(verify_secret, secret_hash, secret)


async def authenticate(username: str, password: str) -> Principal | None:
    """The principal whose credentials these are, or None; restaurants are tried before users."""
    if not is_valid_id(username):  # provisioning gives restaurants and users only such names
        return None
    restaurant = await Restaurant.get(username)
    if restaurant is not None and await _verify(restaurant.secret_hash, password):
        return Principal(subject=username, role=Role.RESTAURANT, restaurant_id=username)
    user = await User.get(username)
    if user is not None and user.role is not Role.RESTAURANT and await _verify(user.password_hash, password):
        return Principal(subject=user.username, role=user.role)
    return None
