"""`WS /ws/dashboard`: a snapshot of the current statuses, then every STATUS_CHANGED in seq order.

With `group=G` only G's restaurants, plus a frame for each restaurant that moves out of G (its status
then names the new group: drop the tile).

The token comes in the query string (browsers cannot set headers on a websocket). Problems with it or
with the query are told with close codes after the handshake, where a browser can read them: 4401 bad
or missing token, 4403 role not allowed, 4400 bad query. A socket is closed with 4401 when its token expires: the page
logs in again and resumes with `since`, so a stolen token is not a dashboard for ever.
"""

import asyncio
import contextlib
import logging
from datetime import datetime

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.datastructures import QueryParams

from api.dashboard_hub import CLOSED, RESET, DashboardHub, MissedTooOld, Subscriber, reset_frame
from api.security import InvalidToken, decode_access_token
from core.documents import Role
from core.messages import utc_now
from core.task_stop import cancel_and_wait

logger = logging.getLogger(__name__)

router = APIRouter(tags=["dashboard"])

READERS = frozenset({Role.SALES, Role.ADMIN})
MAX_GROUP_CHARS = 64
CLOSE_BAD_TOKEN, CLOSE_FORBIDDEN, CLOSE_BAD_QUERY = 4401, 4403, 4400
CLOSE_RESTART, CLOSE_UNAVAILABLE = 1012, 1013  # standard codes: come back (with since) / try again later


def parse_query(params: QueryParams) -> tuple[str | None, int | None]:
    """`group` and `since`, or ValueError saying what is wrong."""
    group = params.get("group") or None
    if group is not None and len(group) > MAX_GROUP_CHARS:
        raise ValueError(f"group is longer than {MAX_GROUP_CHARS} characters")
    raw = params.get("since")
    if raw is None or raw == "":
        return group, None
    if not raw.isdigit() or len(raw) > 18:
        raise ValueError("since must be a sequence number (a non-negative integer)")
    return group, int(raw)


class DashboardSession:
    """One socket: sends from its queue while a reader waits for the client to go away."""

    def __init__(
        self, hub: DashboardHub, websocket: WebSocket, group: str | None, expires_at: datetime | None = None
    ) -> None:
        self.hub = hub
        self.websocket = websocket
        self.group = group
        self.expires_at = expires_at
        self.sub: Subscriber | None = None

    async def serve(self, since: int | None) -> None:
        sender = asyncio.create_task(self._send(since))
        reader = asyncio.create_task(self._read())
        expiry = asyncio.create_task(self._expire())
        try:
            done, _ = await asyncio.wait({sender, reader, expiry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([sender, reader, expiry])
            if self.sub is not None:
                self.hub.unsubscribe(self.sub)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError):
                logger.error("dashboard socket failed", exc_info=exc)

    async def _expire(self) -> None:
        if self.expires_at is None:
            await asyncio.Event().wait()  # never
            return
        await asyncio.sleep(max(0.0, (self.expires_at - utc_now()).total_seconds()))
        await self.websocket.close(CLOSE_BAD_TOKEN, "token expired; log in again")

    async def _read(self) -> None:
        # Clients send nothing the contract uses; reading is how a closed socket is noticed.
        while (await self.websocket.receive())["type"] != "websocket.disconnect":
            pass

    async def _send(self, since: int | None) -> None:
        if since is None:
            await self._snapshot()
        else:
            await self._catch_up(since)
        while True:
            assert self.sub is not None
            item = await self.sub.queue.get()
            if item is RESET:
                await self._reset(self.sub.reset_reason)
            elif item is CLOSED:
                await self.websocket.close(CLOSE_RESTART, "server restarting; reconnect with since")
                return
            else:
                await self.websocket.send_text(item)

    async def _snapshot(self) -> None:
        self.sub, frame = self.hub.snapshot(self.group)
        await self.websocket.send_text(frame)

    async def _reset(self, reason: str) -> None:
        if self.sub is not None:
            self.hub.unsubscribe(self.sub)
        await self.websocket.send_text(reset_frame(reason))
        await self._snapshot()

    async def _catch_up(self, since: int) -> None:
        self.sub = self.hub.follow(self.group, since)
        try:
            async for frames in self.hub.missed(since, self.sub):
                for frame in frames:
                    await self.websocket.send_text(frame)
        except MissedTooOld as exc:
            await self._reset(str(exc))


@router.websocket("/ws/dashboard")
async def dashboard(websocket: WebSocket) -> None:
    await websocket.accept()
    settings = websocket.app.state.settings
    try:
        principal = decode_access_token(settings, websocket.query_params.get("token") or "")
    except InvalidToken as exc:
        await websocket.close(CLOSE_BAD_TOKEN, str(exc) if websocket.query_params.get("token") else "missing token")
        return
    if principal.role not in READERS:
        await websocket.close(CLOSE_FORBIDDEN, "requires role admin or sales")
        return
    try:
        group, since = parse_query(websocket.query_params)
    except ValueError as exc:
        await websocket.close(CLOSE_BAD_QUERY, str(exc))
        return
    hub: DashboardHub = websocket.app.state.dashboard_hub
    try:
        await hub.ensure_started()
    except Exception:
        logger.exception("dashboard feed could not be loaded")
        with contextlib.suppress(Exception):
            await websocket.close(CLOSE_UNAVAILABLE, "dashboard feed not available; try again")
        return
    await DashboardSession(hub, websocket, group, principal.expires_at).serve(since)
