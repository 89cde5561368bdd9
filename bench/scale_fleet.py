"""The fleet of the scale benchmark: restaurants stored directly, client_sim processes that drive them.

Provisioning 100,000 restaurants through MongoDB (argon2 for every secret) would take longer than
the benchmark itself and measures nothing it is about, so each restaurant is stored where the
bridge and the API read it: its profile (always open) and its committed status (DISCONNECTED, as
the platform would have left it before any device) in Redis, its `$7$` hash in the brokers'
password file. The devices are `python -m client_sim` processes, each a slice of the fleet
(`--skip`/`--restaurants`) on every shard (`--broker` per shard) from its own loopback sources.

A fleet may run at a lower priority than the platform (`nice`): real devices take none of the
platform's CPU, and here the simulators share its two cores. Each simulator leads a session of its own,
and with the kernel's autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`) every session is
a group weighted as one, whatever its processes' nice values: so the group's own nice is set too
(`/proc/<pid>/autogroup`), as `nice` alone did nothing (2026-11-28, docs/benchmarks.md §13).
"""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis

from bench.harness import ALWAYS_OPEN
from core.mqtt_passwords import hash_password, upsert_password_entries
from core.settings import Settings
from core.status import RestaurantRules, StatusCore, derive_status
from core.status_codec import profile_json
from stack.platform import settings_env
from stack.process import REPO_ROOT

logger = logging.getLogger(__name__)

WRITE_CHUNK = 5000
MAX_SOCKETS_PER_SIM = 18_000  # under the 20,000 open files a process may hold, with room for the rest
SOURCES_PER_SIM = 4  # loopback source addresses per simulator process
ONLINE_CORE = StatusCore(online=True).model_dump_json()

# Count the restaurants whose committed status core equals ARGV[2], among keys ARGV[1] .. id.
NOT_IN_CORE = """
local out = {}
for i = 3, #ARGV do
  if redis.call('HGET', ARGV[1] .. ARGV[i], 'sc') ~= ARGV[2] then out[#out + 1] = ARGV[i] end
end
return out
"""


def secret_for(rid: str) -> str:
    # Not a real secret: private servers on loopback for the length of one run.
    return f"s-{rid}-{os.getpid()}"


def store_restaurants(settings: Settings, groups: dict[str, str]) -> dict[str, str]:
    """Profiles, committed DISCONNECTED statuses and password entries; restaurant id → secret."""
    redis = Redis.from_url(settings.redis_url, decode_responses=True)
    window = timedelta(seconds=settings.stale_after_s)
    now = datetime.now(UTC)
    secrets = {rid: secret_for(rid) for rid in groups}
    try:
        prefix = f"{settings.redis_prefix}r:"  # PresenceStore.key()
        ids = list(groups)
        for start in range(0, len(ids), WRITE_CHUNK):
            pipe = redis.pipeline(transaction=False)
            for rid in ids[start : start + WRITE_CHUNK]:
                profile = profile_json(groups[rid], settings.default_timezone, ALWAYS_OPEN)
                status = derive_status(rid, RestaurantRules(ALWAYS_OPEN, settings.default_timezone), [], now, window)
                pipe.hset(prefix + rid, mapping={"p": profile, "s": status.model_dump_json(),
                                                 "sc": status.core.model_dump_json(), "v": 1})  # fmt: skip
            pipe.execute()
    finally:
        redis.close()
    upsert_password_entries(settings.mosquitto_passwd_file, {rid: hash_password(s) for rid, s in secrets.items()})
    return secrets


def not_in_core(redis: Redis, settings: Settings, ids: Sequence[str], core: str = ONLINE_CORE) -> list[str]:
    """The ids of `ids` whose committed status is not `core` (yet): the storm polls only those again, so
    its poll costs Redis and this process less and less, not 100,000 reads a second throughout."""
    script = redis.register_script(NOT_IN_CORE)
    out: list[str] = []
    for start in range(0, len(ids), 10_000):
        out += [str(rid) for rid in script(args=[f"{settings.redis_prefix}r:", core, *ids[start : start + 10_000]])]
    return out


@dataclass
class SimSlice:
    index: int
    skip: int
    count: int
    sources: list[str]
    truth: Path
    process: subprocess.Popen[bytes] | None = None
    truth_offset: int = 0


@dataclass
class ConnectTally:
    """What the truth logs of all simulators say so far about connections."""

    connected: set[str] = field(default_factory=set)
    last_connack_ms: int = 0
    first_attempt_ms: int = 0
    refused: int = 0
    lost: int = 0
    failures: int = 0


class SimFleet:
    """The client_sim processes of one run, started together and stopped by PID."""

    def __init__(
        self,
        root: Path,
        settings: Settings,
        credentials: Path,
        restaurants: int,
        brokers: list[str],
        args: list[str],
        processes: int | None = None,
        nice: int = 0,
    ) -> None:
        self.root = root
        self.nice = nice
        self.settings = settings
        self.credentials = credentials
        self.brokers = brokers
        self.args = args
        count = processes or max(1, -(-restaurants // MAX_SOCKETS_PER_SIM))
        per = -(-restaurants // count)
        self.slices = []
        for n in range(count):
            skip = n * per
            size = min(per, restaurants - skip)
            if size <= 0:
                break
            # 127.<n+1>.0.1 …: every simulator its own sources, so no (source, shard) pair runs short of ports.
            sources = [f"127.{n + 1}.0.{k + 1}" for k in range(SOURCES_PER_SIM)]
            self.slices.append(SimSlice(n, skip, size, sources, root / f"truth-{n}.jsonl"))
        self.tally = ConnectTally()

    def command(self, part: SimSlice) -> list[str]:
        cmd = [sys.executable, "-m", "client_sim", "--credentials", str(self.credentials),
               "--skip", str(part.skip), "--restaurants", str(part.count), "--truth", str(part.truth),
               "--quiet", "--log-level", "WARNING"]  # fmt: skip
        for url in self.brokers:
            cmd += ["--broker", url]
        for source in part.sources:
            cmd += ["--bind-address", source]
        return (["nice", "-n", str(self.nice)] if self.nice else []) + cmd + self.args

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")} | settings_env(self.settings)
        for part in self.slices:
            log = (self.root / f"client_sim-{part.index}.log").open("ab")
            with log:
                part.process = subprocess.Popen(
                    self.command(part), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
        if self.nice:
            for pid in self.pids:
                lower_autogroup(pid, self.nice)
        logger.info("%d client_sim processes started (pids %s, nice %d)", len(self.slices), self.pids, self.nice)

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self.slices if p.process is not None]

    def alive(self) -> bool:
        return all(p.process is not None and p.process.poll() is None for p in self.slices)

    def died(self) -> str | None:
        for part in self.slices:
            if part.process is not None and part.process.poll() is not None:
                log = self.root / f"client_sim-{part.index}.log"
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
                return f"client_sim {part.index} exited with {part.process.returncode}:\n{tail}"
        return None

    def read_truth(self) -> ConnectTally:
        """Fold the new lines of every truth log into the tally (the logs are flushed once a second)."""
        t = self.tally
        for part in self.slices:
            if not part.truth.exists():
                continue
            with part.truth.open("rb") as f:
                f.seek(part.truth_offset)
                data = f.read()
            end = data.rfind(b"\n") + 1
            part.truth_offset += end
            for line in data[:end].splitlines():
                if b'"connack"' in line:
                    row = json.loads(line)
                    if row.get("rc") == 0:
                        t.connected.add(row["rid"])
                        t.last_connack_ms = max(t.last_connack_ms, int(row["ts"]))
                    else:
                        t.refused += 1
                elif b'"connect_attempt"' in line and not t.first_attempt_ms:
                    t.first_attempt_ms = int(json.loads(line)["ts"])
                elif b'"connection_lost"' in line:
                    t.lost += 1
                elif b'"connect_failed"' in line or b'"connack_timeout"' in line:
                    t.failures += 1
        return t

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (graceful stop of every device), then SIGKILL of the group after `timeout`."""
        for part in self.slices:
            if part.process is not None and part.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(part.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for part in self.slices:
            process = part.process
            if process is None:
                continue
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("client_sim %d did not stop in %.0f s; killing it", part.index, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(10)


def lower_autogroup(pid: int, nice: int) -> None:
    """Give the scheduling group of `pid`'s session the niceness `nice` (nothing to do without autogroups)."""
    group = Path(f"/proc/{pid}/autogroup")
    try:
        group.write_text(str(nice))
    except FileNotFoundError:
        return  # a kernel without autogroup scheduling: the processes' own nice applies
    except OSError as exc:
        logger.warning("could not lower the priority of simulator %d's group: %s", pid, exc)


def write_credentials(path: Path, secrets: dict[str, str]) -> None:
    rows = [{"restaurant_id": rid, "secret": secret} for rid, secret in secrets.items()]
    path.write_text(json.dumps({"restaurants": rows}))
    path.chmod(0o600)
