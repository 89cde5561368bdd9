"""amqtt authentication against the Mosquitto password file that provisioning writes."""

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import BaseContext
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from core.ids import is_valid_id
from core.mqtt_passwords import read_password_file, verify_password

logger = logging.getLogger(__name__)

FileKey = tuple[int, int, int]


class PasswordFile:
    """The file's entries, re-read when it changes, so new restaurants connect without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, str] = {}
        self._key: FileKey | None = None
        self._lock = asyncio.Lock()

    def _current_key(self) -> FileKey | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot stat password file %s: %s", self.path, exc)
            return self._key  # as if unchanged: keep what is loaded
        # Provisioning replaces the file by rename (new inode); an in-place edit changes mtime or size.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def lookup(self, username: str) -> str | None:
        key = self._current_key()
        if key != self._key:
            async with self._lock:
                if key != self._key:
                    await self._reload(key)
        return self._entries.get(username)

    async def _reload(self, key: FileKey | None) -> None:
        try:
            # 100,000 lines take a while to parse: off the event loop, once per change.
            entries = await asyncio.to_thread(read_password_file, self.path)
        except OSError:
            # Keep the users we know rather than lock everyone out; the next login tries again.
            logger.exception(
                "cannot read password file %s; keeping the %d users loaded before", self.path, len(self._entries)
            )
            return
        self._entries, self._key = entries, key
        if key is None:
            logger.warning("password file %s does not exist: every login is refused", self.path)
        else:
            logger.info("loaded %d users from %s", len(entries), self.path)


def client_id_allowed(username: str, client_id: str | None) -> bool:
    """A restaurant's devices connect as `<restaurant_id>:<device_id>` (DESIGN.md §3)."""
    prefix, sep, device_id = (client_id or "").partition(":")
    return bool(sep) and prefix == username and is_valid_id(device_id)


class PasswordFileAuthPlugin(BaseAuthPlugin):
    """Refuses anonymous and unknown users, wrong passwords and foreign client ids."""

    @dataclass
    class Config:
        password_file: str = "var/mosquitto/passwd"
        platform_user: str = "platform"

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config: PasswordFileAuthPlugin.Config = self.config
        self.platform_user = config.platform_user
        self.passwords = PasswordFile(Path(config.password_file))

    async def authenticate(self, *, session: Session) -> bool | None:
        username, client_id = session.username, session.client_id
        if not username:
            logger.info("refused anonymous client %r", client_id)
            return False
        encoded = await self.passwords.lookup(username)
        if encoded is None or not verify_password(encoded, session.password or ""):
            logger.info("refused client %r: bad username or password for %r", client_id, username)
            return False
        if username != self.platform_user and not client_id_allowed(username, client_id):
            logger.info("refused client %r: a restaurant's client id must be '%s:<device_id>'", client_id, username)
            return False
        return True
