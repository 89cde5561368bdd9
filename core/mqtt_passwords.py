"""Mosquitto's password-file format (`$7$` = PBKDF2-SHA512), read by both brokers."""

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

ITERATIONS = 101  # what mosquitto_passwd 2.0 writes; the file is protected by permissions, not cost


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(encoded: str, password: str) -> bool:
    try:
        _, kind, iterations, salt_b64, digest_b64 = encoded.split("$")
        if kind != "7":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(digest, expected)


def read_password_file(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    if not path.exists():
        return entries
    for line in path.read_text().splitlines():
        user, sep, encoded = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            entries[user] = encoded
    return entries


def upsert_password_entries(path: Path, entries: dict[str, str]) -> None:
    """Merge `username -> encoded hash` into the file, replacing it atomically (rename).

    Read, merge and rename happen under an exclusive lock on a file beside it, so two writers (two API
    processes, two provisioning requests in one process's threads, the CLI) never lose each other's
    entries. The brokers only read, and a rename never shows them a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        merged = read_password_file(path)
        merged.update(entries)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp creates it 0600
                out.write("".join(f"{user}:{encoded}\n" for user, encoded in sorted(merged.items())))
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
