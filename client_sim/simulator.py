"""The simulator as an object: start it, drive or inspect its devices, stop it (CLI, tests, bench)."""

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from client_sim.brokers import broker_of
from client_sim.config import SimConfig
from client_sim.context import DeviceContext, DeviceState, SimStats
from client_sim.credentials import RestaurantCredential
from client_sim.device import SimDevice
from client_sim.ground_truth import TruthLog
from client_sim.mqtt_pump import MqttPump
from client_sim.scenario import ScenarioRunner
from client_sim.schedules import ScheduleDriver

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0


class Simulator:
    """N restaurants × M devices on one asyncio loop.

    Whole runs: `stats = await Simulator(config, restaurants).run()` follows `config.scenario` for
    `config.duration_s`. Hand-driven (tests, benchmarks)::

        async with Simulator(config, restaurants) as sim:   # start(), and stop() on the way out
            sim.start_all()
            await sim.wait_connected()
            sim.device("r1").crash()                        # also flap(), takeover(), go_silent() …
    """

    def __init__(self, config: SimConfig, restaurants: Sequence[RestaurantCredential]) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.stats = SimStats()
        self.truth = TruthLog(config.truth_path)
        self.pump = MqttPump(config.connect_threads, config.keepalive_s)
        ctx = DeviceContext(config, self.pump, self.truth, self.rng, self.stats)
        sources = config.bind_addresses or [""]
        self.devices = [
            SimDevice(ctx, r.restaurant_id, r.secret, did, broker_of(r.restaurant_id, config.brokers),
                      sources[index % len(sources)])
            for index, (r, did) in enumerate((r, did) for r in restaurants for did in config.device_ids())
        ]
        self._by_key = {(d.rid, d.did): d for d in self.devices}
        self.scenario = ScenarioRunner(self.devices, config, self.rng)
        self.schedules = (
            ScheduleDriver(config, restaurants, self.truth, self.rng)
            if config.api_url and config.schedule_rate > 0 else None
        )
        self._stop_requested = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._started = False

    async def __aenter__(self) -> "Simulator":
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Ready the loop integration and the log; devices connect when told (or by `run`)."""
        self.pump.start()
        self.truth.open()
        self.truth.write("run_start", config=_config_summary(self.config), devices=len(self.devices))
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        self._started = True

    def device(self, restaurant_id: str, device_id: str | None = None) -> SimDevice:
        return self._by_key[(restaurant_id, device_id or self.config.device_ids()[0])]

    def start_all(self) -> None:
        """Start every device now (tests); `run` follows the scenario's ramp instead."""
        for device in self.devices:
            device.start()

    async def wait_connected(self, count: int | None = None, timeout: float = 60.0) -> bool:
        """Wait until `count` devices (default: all) are connected; False if that takes too long."""
        wanted = len(self.devices) if count is None else count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(1 for d in self.devices if d.state is DeviceState.CONNECTED) < wanted:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def request_stop(self) -> None:
        """Make `run` end early (e.g. on SIGINT); the devices still stop gracefully."""
        self._stop_requested.set()

    async def run(self) -> SimStats:
        """Follow the configured scenario for its duration, then stop gracefully."""
        if not self._started:
            await self.start()
        schedules_done = asyncio.Event()
        driver = None
        if self.schedules is not None:
            driver = asyncio.get_running_loop().create_task(self.schedules.run(schedules_done))
        try:
            await self.scenario.run(self._stop_requested)
        finally:
            schedules_done.set()
            if driver is not None:
                await asyncio.gather(driver, return_exceptions=True)
            await self.stop()
        return self.stats

    async def stop(self) -> None:
        """Stop every device gracefully (offline, PUBACK, DISCONNECT), then close the log."""
        if not self._started:
            return
        self._started = False
        await self.scenario.close()
        if self.schedules is not None:
            await self.schedules.close()
            self.stats.schedules = self.schedules.summary()
        for device in self.devices:
            device.finished = True
        await asyncio.gather(*(device.stop(final=True) for device in self.devices))
        await self.pump.close()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        self.stats.actions = dict(self.scenario.actions)
        self.truth.write("run_end", stats=asdict(self.stats))
        self.truth.close()

    def snapshot(self) -> dict[str, int]:
        states = Counter(device.state for device in self.devices)
        return {
            "devices": len(self.devices),
            "connected": states[DeviceState.CONNECTED],
            "connecting": states[DeviceState.CONNECTING],
            "backoff": states[DeviceState.BACKOFF],
            "down": sum(states[s] for s in (DeviceState.IDLE, DeviceState.DOWN, DeviceState.STOPPING,
                                            DeviceState.STOPPED)),
            "silent": sum(1 for d in self.devices if d.silent and d.state is DeviceState.CONNECTED),
            "published": self.stats.published,
            "heartbeats": self.stats.heartbeats,
            "status_received": self.stats.status_received,
            "open_sockets": self.pump.open_sockets,
        }

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.truth.flush()


def _config_summary(config: SimConfig) -> dict[str, Any]:
    summary = asdict(config)
    summary["truth_path"] = str(config.truth_path) if config.truth_path else None
    return summary
