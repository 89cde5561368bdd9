"""What happens when: the start ramp, then steady heartbeats or churn, until the duration is over."""

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from client_sim.config import SimConfig
from client_sim.context import DeviceState
from client_sim.device import SimDevice
from core.errors import ConfigError

logger = logging.getLogger(__name__)

CHURN_ACTIONS = ("crash", "graceful", "takeover", "silent", "flap")
_PICK_TRIES = 32


class ScenarioRunner:
    """Drives the devices of one run; every follow-up it schedules is cancelled when the run ends."""

    def __init__(self, devices: list[SimDevice], config: SimConfig, rng: random.Random) -> None:
        unknown = set(config.churn_mix) - set(CHURN_ACTIONS)
        if unknown:
            raise ConfigError(f"unknown churn actions {sorted(unknown)}; known: {', '.join(CHURN_ACTIONS)}")
        if config.scenario == "churn" and (min(config.churn_mix.values(), default=0) < 0
                                           or sum(config.churn_mix.values()) <= 0):
            raise ConfigError("churn weights must not be negative and at least one must be positive")
        self.devices = devices
        self.config = config
        self.rng = rng
        self.actions: dict[str, int] = dict.fromkeys(CHURN_ACTIONS, 0)
        self._handles: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def start_devices(self) -> None:
        """steady/churn: evenly over the ramp; storm: each device at a random instant of the ramp."""
        count = len(self.devices)
        ramp = max(self.config.ramp_s, 0.0)
        storm = self.config.scenario == "storm"
        for index, device in enumerate(self.devices):
            self._later(self.rng.uniform(0, ramp) if storm else ramp * index / count, device.start)

    async def run(self, stop: asyncio.Event) -> None:
        self.start_devices()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.duration_s
        if self.config.scenario == "churn" and self.config.churn_rate > 0:
            await _wait(stop, min(self.config.ramp_s, self.config.duration_s))
            while not stop.is_set() and loop.time() < deadline:
                self._churn_once()
                pause = self.rng.expovariate(self.config.churn_rate)
                await _wait(stop, min(pause, deadline - loop.time()))
        await _wait(stop, deadline - loop.time())

    async def close(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _churn_once(self) -> None:
        names = list(self.config.churn_mix)
        action = self.rng.choices(names, weights=[self.config.churn_mix[n] for n in names])[0]
        device = self._pick_connected(require_heartbeating=action == "silent")
        if device is None:
            return
        logger.debug("churn: %s %s", action, device.client_id)
        self.actions[action] += 1
        if action == "crash":
            device.crash()
            self._later(self._downtime(), device.start, "restart")
        elif action == "graceful":
            task = asyncio.get_running_loop().create_task(self._stop_then_restart(device))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif action == "takeover":
            device.takeover()
        elif action == "silent":
            device.go_silent()
            self._later(self.rng.uniform(*self.config.silent_s), device.end_silent)
        else:
            device.flap()

    async def _stop_then_restart(self, device: SimDevice) -> None:
        await device.stop()
        self._later(self._downtime(), device.start, "restart")

    def _pick_connected(self, require_heartbeating: bool) -> SimDevice | None:
        # A few random draws instead of scanning every device: cheap at 10,000 devices.
        for _ in range(_PICK_TRIES if self.devices else 0):
            device = self.rng.choice(self.devices)
            if device.state is DeviceState.CONNECTED and not (require_heartbeating and device.silent):
                return device
        return None

    def _downtime(self) -> float:
        return self.rng.uniform(*self.config.downtime_s)

    def _later(self, delay: float, callback: Callable[..., object], *args: object) -> None:
        loop = asyncio.get_running_loop()
        self._handles.append(loop.call_later(delay, callback, *args))
        if len(self._handles) > 2 * len(self.devices) + 1000:  # forget the ones that already ran
            now = loop.time()
            self._handles = [h for h in self._handles if not h.cancelled() and h.when() > now]


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
