"""`python -m bench [ingest|birth|all] [--quick]`: the benchmarks, each on private servers, then a table.

ingest  heartbeats/s through one bridge process (goal ≥ 25,000/s) against the naive baseline bridge
birth   p50/p99 from a device's birth to its restaurant being online in the API
births  N births at once through one bridge alone (--births, default 15,000): births/s and CPU per process
burst   the 10:00 opening: N restaurants open at once; time until every status, event and retained copy is right
ranking the offline ranking over N restaurants × 30 days of history: top 100 and full CSV (goals ≤ 1 s, ≤ 5 s)
churn   the whole platform under client_sim's churn against its ground truth (not part of `all`; bench/churn.py)
scale   100,000 sessions over Mosquitto shards: storm, steady load, crash detection, batch status (not in `all`)
publish CPU per confirmed event publish: the platform's publisher against aio-pika's
status  batch status of 1,000 ids from 20 concurrent clients, on its own (goal p99 ≤ 20 ms)
detection  crash, silent drop and silent app detection on Mosquitto and on amqtt, nothing else connected
"""

import argparse
import dataclasses
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench.batch_status import batch_status_benchmark, batch_status_rows
from bench.birth_latency import birth_benchmark
from bench.birth_storm import birth_storm_benchmark, birth_storm_rows
from bench.churn import churn
from bench.churn_faults import FAULTS, Fault
from bench.churn_report import ChurnConfig
from bench.detection import BROKERS, DetectionConfig, detection_benchmark, detection_result_rows
from bench.harness import Machine
from bench.ingest import IngestConfig, ingest_benchmark
from bench.load import publisher_count
from bench.opening_burst import burst_benchmark, burst_rows
from bench.profiling import summarise
from bench.publish import publish_benchmark, publish_rows
from bench.ranking import ranking_benchmark, ranking_rows
from bench.report import Row, birth_rows, ingest_rows, render, save
from bench.scale import ScaleConfig, scale_benchmark, scale_rows
from stack.process import REPO_ROOT

GOAL_HEARTBEATS_PER_S = 25_000.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FULL = {"devices": 6000, "duration": 30.0, "births": 300, "drain": 120.0, "restaurants": 100_000, "ranked": 100_000,
        "status_restaurants": 20_000, "publish": 20_000, "storm_births": 15_000}
QUICK = {"devices": 2000, "duration": 10.0, "births": 100, "drain": 30.0, "restaurants": 5000, "ranked": 10_000,
         "status_restaurants": 5000, "publish": 5000, "storm_births": 3000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "which",
        nargs="?",
        choices=["all", "ingest", "birth", "births", "publish", "burst", "ranking", "churn", "scale", "status",
                 "detection"],
        default="all",
    )
    parser.add_argument("--quick", action="store_true", help="reduced sizes: all of it in under two minutes")
    parser.add_argument("--devices", type=int, help="ingest: devices (= restaurants), one connection each")
    parser.add_argument("--duration", type=float, help="ingest: seconds of heartbeats")
    parser.add_argument(
        "--rate",
        type=float,
        default=GOAL_HEARTBEATS_PER_S,
        help="ingest: heartbeats/s offered in total (0 = as fast as the publishers can)",
    )
    parser.add_argument("--publishers", type=int, default=publisher_count(), help="ingest: publisher processes")
    parser.add_argument("--naive-concurrency", type=int, default=100, help="ingest: baseline's messages in flight")
    parser.add_argument("--mqtt-protocol", default="auto", help="ingest: the bridge's mqtt_protocol setting")
    parser.add_argument("--events", type=int, help="publish: events per run (full 20,000; quick 5,000)")
    parser.add_argument("--births", type=int,
                        help="birth: measured births (after one warm-up round); births: births sent at once")
    parser.add_argument("--restaurants", type=int, help="burst: restaurants opening at the same instant")
    parser.add_argument("--ranked", type=int, help="ranking: restaurants in the 30 days of history")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="ingest: run the bridge under cProfile, one file per thread in DIR (slows it down)",
    )
    parser.add_argument("--churn-restaurants", type=int, help="churn: restaurants (full 10,000; quick 500)")
    parser.add_argument("--churn-duration", type=float, help="churn: seconds (full 600, a checkpoint a minute)")
    parser.add_argument("--fault", choices=sorted(FAULTS), help="churn: inject this fault a third into the run")
    parser.add_argument("--broker", choices=BROKERS, help="detection: only this broker (default: both)")
    parser.add_argument("--sessions", type=int, help="scale: device sessions (full 100,000; quick 5,000)")
    parser.add_argument("--shards", type=int, help="scale: Mosquitto shards (full 8; quick 3)")
    parser.add_argument("--ramp", type=float, help="scale: seconds over which the sessions connect (full 60; quick 15)")
    parser.add_argument("--sim-nice", type=int, help="scale: the simulators' niceness (default 10; 0: as the platform)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and logs (paths are printed)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="results as JSON (default bench-results/<time>.json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every server start and stop")
    return parser.parse_args(argv)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or Ctrl-C: unwinds through every `finally`, so each server and process is stopped by PID.

    A KeyboardInterrupt, because asyncio lets only that and SystemExit out of a task: raised inside one
    of a run's tasks, a plain BaseException only ended that task, and the run went on.
    """


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=LOG_FORMAT)
    logging.getLogger("bench").setLevel(logging.INFO)
    if args.verbose:
        logging.getLogger("stack").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    sizes = QUICK if args.quick else FULL
    machine = Machine.read()
    started = datetime.now(UTC)
    meta: dict[str, object] = {
        "command": " ".join(["python -m bench", *sys.argv[1:]]) if argv is None else " ".join(argv),
        "machine": machine.describe(),
        "date": started.isoformat(timespec="seconds"),
    }
    print(f"bench: {meta['date']} on {meta['machine']}", file=sys.stderr)
    rows: list[Row] = []
    raw: dict[str, object] = {}
    t0 = time.monotonic()
    if args.which in ("all", "ingest"):
        config = IngestConfig(
            devices=args.devices or int(sizes["devices"]),
            publishers=args.publishers,
            duration_s=args.duration or float(sizes["duration"]),
            rate=args.rate,
            drain_timeout_s=float(sizes["drain"]),
            naive_concurrency=args.naive_concurrency,
        )
        overrides: dict[str, object] = {} if args.mqtt_protocol == "auto" else {"mqtt_protocol": args.mqtt_protocol}
        print(f"bench: ingest with {config}", file=sys.stderr)
        bridge, naive = ingest_benchmark(config, args.profile, overrides, args.keep)
        rows += ingest_rows(config, bridge, naive, GOAL_HEARTBEATS_PER_S)
        raw["ingest"] = {"config": dataclasses.asdict(config), "bridge": dataclasses.asdict(bridge),
                         "naive": dataclasses.asdict(naive)}  # fmt: skip
    if args.which in ("all", "birth"):
        births = args.births or int(sizes["births"])
        print(f"bench: birth latency over {births} births", file=sys.stderr)
        result = birth_benchmark(births, args.keep)
        rows += birth_rows(result)
        raw["birth"] = dataclasses.asdict(result)
    if args.which in ("all", "births"):
        storm_births = args.births or int(sizes["storm_births"])
        print(f"bench: {storm_births:,} births at once through one bridge", file=sys.stderr)
        storm_result = birth_storm_benchmark(storm_births, args.keep)
        rows += birth_storm_rows(storm_result)
        raw["births"] = dataclasses.asdict(storm_result)
    if args.which in ("all", "burst"):
        restaurants = args.restaurants or int(sizes["restaurants"])
        print(f"bench: opening burst of {restaurants:,} restaurants", file=sys.stderr)
        burst = burst_benchmark(restaurants, args.keep)
        rows += burst_rows(burst)
        raw["burst"] = dataclasses.asdict(burst)
    if args.which in ("all", "publish"):
        count = args.events or int(sizes["publish"])
        print(f"bench: {count:,} confirmed event publishes, each publisher twice", file=sys.stderr)
        published = publish_benchmark(count, args.keep)
        rows += publish_rows(published)
        raw["publish"] = dataclasses.asdict(published)
    if args.which in ("all", "ranking"):
        ranked = args.ranked or int(sizes["ranked"])
        print(f"bench: offline ranking over {ranked:,} restaurants × 30 days", file=sys.stderr)
        ranking = ranking_benchmark(ranked, keep=args.keep)
        rows += ranking_rows(ranking)
        raw["ranking"] = dataclasses.asdict(ranking)
    if args.which in ("all", "status"):
        known = args.restaurants or int(sizes["status_restaurants"])
        print(f"bench: batch status over {known:,} restaurants", file=sys.stderr)
        for workers in (1, 2):  # one API process, then two (uvicorn --workers) on the 2 cores
            status = batch_status_benchmark(known, api_workers=workers, keep=args.keep)
            rows += batch_status_rows(status)
            raw[f"status_{workers}"] = dataclasses.asdict(status)
    if args.which == "churn":
        churn_config = (
            ChurnConfig(restaurants=500, duration_s=90.0, checkpoint_every_s=15.0) if args.quick else ChurnConfig.full()
        )
        churn_config.restaurants = args.churn_restaurants or churn_config.restaurants
        churn_config.duration_s = args.churn_duration or churn_config.duration_s
        faults = [Fault(args.fault, churn_config.duration_s / 3, FAULTS[args.fault])] if args.fault else []
        print(f"bench: churn with {churn_config}", file=sys.stderr)
        report = churn(churn_config, faults, args.keep)
        print(report.summary())
        rows += report.rows()
        raw["churn"] = dataclasses.asdict(report)
    if args.which == "scale":
        scale_config = ScaleConfig.quick() if args.quick else ScaleConfig.full()
        scale_config.sessions = args.sessions or scale_config.sessions
        scale_config.shards = args.shards or scale_config.shards
        scale_config.ramp_s = args.ramp or scale_config.ramp_s
        scale_config.sim_nice = scale_config.sim_nice if args.sim_nice is None else args.sim_nice
        print(f"bench: scale with {scale_config}", file=sys.stderr)
        scale = scale_benchmark(scale_config, args.keep)
        rows += scale_rows(scale)
        raw["scale"] = dataclasses.asdict(scale)
    if args.which in ("all", "detection"):
        detection_config = DetectionConfig.quick() if args.quick else DetectionConfig()
        brokers = (args.broker,) if args.broker else BROKERS
        print(f"bench: detection on {', '.join(brokers)} with {detection_config}", file=sys.stderr)
        detected = detection_benchmark(detection_config, brokers, args.keep)
        rows += detection_result_rows(detected)
        raw["detection"] = [dataclasses.asdict(d) for d in detected]
    meta["seconds"] = round(time.monotonic() - t0, 1)
    print()
    print(f"{meta['command']}  —  {meta['date']}  —  {meta['machine']}  —  {meta['seconds']} s")
    print(render(rows))
    out = args.json or REPO_ROOT / "bench-results" / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    save(out, meta, rows, raw)
    print(f"\nresults saved to {out}", file=sys.stderr)
    if args.profile:
        for path in sorted(args.profile.glob("*.prof")):
            if path.name == "main.prof" or path.name.startswith("paho"):
                print(f"\n--- {path.name}: most own time\n{summarise(path, 15)}")
        print(f"profiles of every thread of the bridge in {args.profile} (python -m pstats FILE)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Interrupted as stop:
        print(f"bench: {stop}: stopped; every server and process it started has been stopped", file=sys.stderr)
        sys.exit(130)
