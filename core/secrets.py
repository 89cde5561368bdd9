"""Hashing of restaurant secrets and user passwords (argon2) for the API's logins."""

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Generated secrets carry 192 random bits, so a memory-hard cost adds nothing against guessing
# but makes provisioning 100,000 restaurants take hours (~100 ms a hash here); still argon2id,
# and `verify_secret` reads the parameters from the hash.
_generated_hasher = PasswordHasher(time_cost=1, memory_cost=4096, parallelism=1)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def hash_generated_secret(secret: str) -> str:
    """Hash a secret made by `new_secret` (never a human-chosen password) at a low cost."""
    return _generated_hasher.hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    try:
        return _hasher.verify(secret_hash, secret)
    except (VerificationError, InvalidHashError):
        return False
