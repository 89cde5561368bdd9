"""`python -m client_sim`: drive N restaurants × M devices against one or more brokers."""

import argparse
import asyncio
import json
import logging
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from client_sim.brokers import loopback_sources
from client_sim.config import DEFAULT_CHURN_MIX, SCENARIOS, SimConfig
from client_sim.credentials import load_credentials
from client_sim.progress import ProgressDisplay
from client_sim.simulator import Simulator
from core.errors import ConfigError
from core.settings import Settings

logger = logging.getLogger("client_sim")


def _range(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        values = (float(low), float(high if sep else low))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN:MAX seconds") from exc
    if values[0] < 0 or values[1] < values[0]:
        raise argparse.ArgumentTypeError(f"{text!r} needs 0 <= MIN <= MAX")
    return values


def _mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight) if sep else 1.0
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from exc
    return mix


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client_sim", description=__doc__)
    add = parser.add_argument
    add("--credentials", type=Path, default=settings.var_dir / "demo-credentials.json",
        help="JSON written by provisioning (default: %(default)s)")
    add("--restaurants", type=int, default=None, help="use the first N restaurants of the file (default: all)")
    add("--skip", type=int, default=0, help="skip the first K restaurants (to split a fleet over processes)")
    add("--devices", type=int, default=1, help="devices per restaurant (default: %(default)s)")
    add("--broker", action="append", default=None, metavar="URL",
        help="mqtt://host:port or ws://host:port; repeat for shards (default: PRESENCE_MQTT_BROKERS)")
    add("--scenario", choices=SCENARIOS, default="steady")
    add("--duration", type=float, default=60.0, help="seconds the run lasts, ramp included (default: %(default)s)")
    add("--ramp", type=float, default=10.0, help="seconds over which the devices connect (default: %(default)s)")
    add("--heartbeat-interval", type=float, default=settings.heartbeat_interval_s,
        help="seconds between heartbeats (default: %(default)s)")
    add("--keepalive", type=int, default=60, help="MQTT keepalive seconds (default: %(default)s)")
    add("--backoff-base", type=float, default=0.5, help="first reconnect delay ceiling (default: %(default)s)")
    add("--backoff-cap", type=float, default=30.0, help="largest reconnect delay (default: %(default)s)")
    add("--churn-rate", type=float, default=1.0, help="churn actions per second (default: %(default)s)")
    add("--churn-mix", type=_mix, default=dict(DEFAULT_CHURN_MIX),
        help="weights, e.g. crash=2,graceful=1,takeover=1,silent=1,flap=1")
    add("--downtime", type=_range, default=(5.0, 60.0), help="MIN:MAX seconds down after a crash or stop")
    add("--silent", type=_range, default=(60.0, 300.0), help="MIN:MAX seconds a silent app stays silent")
    add("--seed", type=int, default=None, help="makes the scenario's choices repeatable")
    add("--truth", type=Path, default=None, help="write the ground-truth JSON-lines log here")
    add("--truth-heartbeats", action="store_true",
        help="log every heartbeat (default: the first and last of each run of heartbeats)")
    add("--connect-threads", type=int, default=16, help="threads that open connections (default: %(default)s)")
    add("--bind-address", action="append", default=[], metavar="ADDR",
        help="local address to connect from; repeat to spread connections (e.g. 127.0.0.2 … 127.0.0.9)")
    add("--loopback-sources", type=int, default=0, metavar="N",
        help="connect from 127.0.0.2 … 127.0.0.N+1 (for more than ~10,000 connections on one machine)")
    add("--api-url", default=None, metavar="URL",
        help="the API (e.g. http://127.0.0.1:8000): needed for --schedule-rate")
    add("--schedule-rate", type=float, default=0.0,
        help="unavailabilities scheduled per second through the API, over all restaurants (default: none)")
    add("--schedule-lead", type=_range, default=(0.0, 30.0),
        help="MIN:MAX seconds from now to an unavailability's start; under 1 s it starts now")
    add("--schedule-length", type=_range, default=(10.0, 120.0), help="MIN:MAX seconds an unavailability lasts")
    add("--cancel-share", type=float, default=0.3, help="share of them cancelled early (default: %(default)s)")
    add("--quiet", action="store_true", help="no progress display")
    add("--log-level", default="INFO")
    return parser


def config_from_args(args: argparse.Namespace, settings: Settings) -> SimConfig:
    if args.devices < 1:
        raise ConfigError("--devices must be at least 1")
    if args.duration <= 0 or args.ramp < 0 or args.heartbeat_interval <= 0 or args.churn_rate < 0:
        raise ConfigError("--duration and --heartbeat-interval must be positive, --ramp and --churn-rate not negative")
    if args.schedule_rate < 0 or not 0 <= args.cancel_share <= 1:
        raise ConfigError("--schedule-rate must not be negative and --cancel-share must be within 0..1")
    if args.schedule_rate > 0 and not args.api_url:
        raise ConfigError("--schedule-rate needs --api-url")
    return SimConfig(
        brokers=args.broker or list(settings.mqtt_brokers),
        devices_per_restaurant=args.devices,
        scenario=args.scenario,
        duration_s=args.duration,
        ramp_s=args.ramp,
        heartbeat_interval_s=args.heartbeat_interval,
        keepalive_s=args.keepalive,
        backoff_base_s=args.backoff_base,
        backoff_cap_s=args.backoff_cap,
        churn_rate=args.churn_rate,
        churn_mix=args.churn_mix,
        downtime_s=args.downtime,
        silent_s=args.silent,
        seed=args.seed,
        truth_path=args.truth,
        truth_heartbeats="all" if args.truth_heartbeats else "edges",
        connect_threads=args.connect_threads,
        bind_addresses=args.bind_address + loopback_sources(args.loopback_sources),
        api_url=args.api_url,
        schedule_rate=args.schedule_rate,
        schedule_lead_s=args.schedule_lead,
        schedule_length_s=args.schedule_length,
        cancel_share=args.cancel_share,
    )


async def run(config: SimConfig, args: argparse.Namespace) -> dict[str, object]:
    restaurants = load_credentials(args.credentials, args.restaurants, args.skip)
    simulator = Simulator(config, restaurants)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _on_signal, simulator, signum)
    logger.info("%d restaurants × %d devices, scenario %s for %.0f s against %s",
                len(restaurants), config.devices_per_restaurant, config.scenario, config.duration_s,
                ", ".join(config.brokers))
    progress_task = None
    if not args.quiet:
        progress = ProgressDisplay(simulator.snapshot, sys.stderr)
        progress_task = loop.create_task(progress.run())
    try:
        stats = await simulator.run()
    finally:
        if progress_task is not None:
            progress_task.cancel()
            await asyncio.gather(progress_task, return_exceptions=True)
    return {"devices": len(simulator.devices), **asdict(stats)}


def _on_signal(simulator: Simulator, signum: int) -> None:
    logger.info("%s: stopping the devices gracefully", signal.Signals(signum).name)
    loop = asyncio.get_running_loop()
    # A second signal means "now": restore the default so it kills the process.
    loop.remove_signal_handler(signum)
    signal.signal(signum, signal.SIG_DFL)
    simulator.request_stop()


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API request otherwise
    try:
        config = config_from_args(args, settings)
        summary = asyncio.run(run(config, args))
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
