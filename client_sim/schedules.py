"""Restaurants scheduling and cancelling unavailabilities through the API, as their staff would.

Each action logs to the ground truth what the API accepted (`unavailability_created` with the
window the API stored, `unavailability_cancelled` with the cancel instant the API stored), so the
expected status of a restaurant at any instant can be replayed from the log (`ground_truth`).

An answer that never came (a timeout, a dropped connection) or a 5xx does not say whether the API
committed the change: the driver then reads the restaurant's unavailabilities back, as a restaurant's
staff would look again, and logs what it finds (`recovered`). Each request carries a note of its own
to be found by.
"""

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from client_sim.config import SimConfig
from client_sim.credentials import RestaurantCredential
from client_sim.ground_truth import TruthLog
from core.status import UnavailabilityReason

logger = logging.getLogger(__name__)

REASONS = tuple(UnavailabilityReason)
HTTP_TIMEOUT_S = 10.0
LOOK_AGAIN = (1.0, 2.0, 4.0)  # seconds before each read-back of an uncertain outcome
CLOSE_WAIT_S = 2 * HTTP_TIMEOUT_S + sum(LOOK_AGAIN) * 2  # an action's calls and read-backs, at the worst


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _uncertain(response: httpx.Response | None) -> bool:
    """No answer, or a server error: the change may have been committed before it failed."""
    return response is None or response.status_code >= 500


class ScheduleDriver:
    """`run(stop)` schedules at `config.schedule_rate` per second until stopped; errors are counted."""

    def __init__(self, config: SimConfig, restaurants: Sequence[RestaurantCredential], truth: TruthLog,
                 rng: random.Random, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`transport`: for tests that talk to the app in-process instead of over TCP."""
        assert config.api_url, "schedules need the API's URL"
        self.config = config
        self.restaurants = list(restaurants)
        self.truth = truth
        self.rng = rng
        self.created = 0
        self.cancelled = 0
        self.cancel_refused = 0
        self.errors = 0
        self.recovered = 0  # outcomes learned by reading back after an uncertain answer
        self._tokens: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._sleeping: set[asyncio.Task[None]] = set()  # cancels waiting for their instant, nothing asked yet
        self._closing = False
        self._logged_errors: set[str] = set()
        self._http = httpx.AsyncClient(base_url=config.api_url, timeout=HTTP_TIMEOUT_S, transport=transport)

    async def run(self, stop: asyncio.Event) -> None:
        if self.config.schedule_rate <= 0 or not self.restaurants:
            return
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.rng.expovariate(self.config.schedule_rate))
            except TimeoutError:
                self._spawn(self.schedule_one(self.rng.choice(self.restaurants)))

    async def close(self) -> None:
        """Let actions in flight finish (cancels still waiting for their instant are dropped: the run is over).

        An action cut off in the middle of its request may be committed by the API without a word in the
        truth: a run's last POST was once cancelled so, and its unavailability showed in the API alone.
        """
        self._closing = True  # an action that finishes now schedules no cancel
        for task in list(self._sleeping):
            task.cancel()
        if self._pending:
            _done, late = await asyncio.wait(self._pending, timeout=CLOSE_WAIT_S)
            for task in late:
                self._error("close", f"an action still unanswered after {CLOSE_WAIT_S:.0f} s was given up")
                task.cancel()
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._http.aclose()

    def summary(self) -> dict[str, int]:
        return {"created": self.created, "cancelled": self.cancelled, "cancel_refused": self.cancel_refused,
                "errors": self.errors, "recovered": self.recovered}

    async def schedule_one(self, restaurant: RestaurantCredential) -> None:
        """One unavailability now or soon; some are cancelled later (during or before them)."""
        lead = self.rng.uniform(*self.config.schedule_lead_s)
        length = self.rng.uniform(*self.config.schedule_length_s)
        now = datetime.now(UTC)
        note = f"client_sim {uuid.uuid4().hex[:12]}"  # not from the seeded rng: the scenario stays the same
        body: dict[str, str] = {"reason": self.rng.choice(REASONS).value, "note": note}
        start = now + timedelta(seconds=lead)
        if lead >= 1.0:
            body["start"] = start.isoformat()  # else "now": the API stamps the start itself
        body["end"] = (start + timedelta(seconds=length)).isoformat()
        path = f"/restaurants/{restaurant.restaurant_id}/unavailabilities"
        response = await self._call(restaurant, "POST", path, json=body)
        if response is not None and response.status_code == 201:
            record = response.json()
        elif _uncertain(response):
            found = await self._read_back(restaurant, path, lambda items: next(
                (item for item in items["items"] if item["note"] == note), None))  # fmt: skip
            if found is None:
                return
            record = found
        else:
            return
        self.created += 1
        self.truth.write("unavailability_created", restaurant.restaurant_id, uid=record["id"],
                         reason=record["reason"], start=_ms(record["start"]), end=_ms(record["end"]))
        if self.rng.random() < self.config.cancel_share and not self._closing:
            delay = self.rng.uniform(0, lead + length)
            self._spawn(self._cancel_later(restaurant, record["id"], delay))

    async def _cancel_later(self, restaurant: RestaurantCredential, uid: str, delay: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sleeping.add(task)
        try:
            await asyncio.sleep(delay)
        finally:
            self._sleeping.discard(task)
        path = f"/restaurants/{restaurant.restaurant_id}/unavailabilities/{uid}"
        response = await self._call(restaurant, "DELETE", path)
        if response is not None and response.status_code == 409:  # it ended first: nothing to cancel
            self.cancel_refused += 1
            return
        if response is not None and response.status_code == 200:
            record = response.json()
        elif _uncertain(response):
            record = await self._read_back(restaurant, path, lambda item: item if item["cancelled_at"] else None)
            if record is None:
                return
        else:
            return
        self.cancelled += 1
        self.truth.write("unavailability_cancelled", restaurant.restaurant_id, uid=uid,
                         cancelled_at=_ms(record["cancelled_at"]))

    async def _read_back(self, restaurant: RestaurantCredential, path: str,
                         pick: Callable[[Any], dict[str, Any] | None]) -> dict[str, Any] | None:
        """What the API holds after an uncertain answer: `pick` applied to GET `path`, asked until answered.

        None when the change was not committed, or when the API never answered (the truth then lacks
        it: counted in `errors`, logged once).
        """
        for delay in LOOK_AGAIN:
            await asyncio.sleep(delay)
            response = await self._call(restaurant, "GET", path)
            if response is not None and response.status_code == 200:
                found = pick(response.json())
                self.recovered += found is not None
                return found
        self._error("read back", f"GET {path} never answered: an unavailability's outcome is unknown")
        return None

    async def _call(self, restaurant: RestaurantCredential, method: str, path: str,
                    **kwargs: object) -> httpx.Response | None:
        for attempt in range(2):
            try:
                headers = {"Authorization": f"Bearer {await self._token(restaurant)}"}
                response = await self._http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]
            except (httpx.HTTPError, PermissionError) as exc:
                self._error(f"{method} {path.split('/')[1]}", str(exc))
                return None
            if response.status_code == 401 and attempt == 0:
                self._tokens.pop(restaurant.restaurant_id, None)  # expired: log in again once
                continue
            if response.status_code >= 400 and response.status_code != 409:
                self._error(f"{method} {response.status_code}", response.text[:200])
            return response
        return None

    async def _token(self, restaurant: RestaurantCredential) -> str:
        token = self._tokens.get(restaurant.restaurant_id)
        if token is None:
            response = await self._http.post(
                "/auth/token", data={"username": restaurant.restaurant_id, "password": restaurant.secret}
            )
            if response.status_code != 200:
                raise PermissionError(f"login of {restaurant.restaurant_id} refused: {response.status_code}")
            token = str(response.json()["access_token"])
            self._tokens[restaurant.restaurant_id] = token
        return token

    def _error(self, kind: str, detail: str) -> None:
        self.errors += 1
        if kind not in self._logged_errors:  # once per kind: a down API must not flood the log
            self._logged_errors.add(kind)
            logger.warning("schedule call failed (%s): %s", kind, detail)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
