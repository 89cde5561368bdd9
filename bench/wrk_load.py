"""Batch status from `wrk`, a load generator in C: 20 keep-alive connections, each sending its next request
as soon as the last is answered (the closed loop of the Python clients, without their cost).

The Python clients (bench/scale_status.py `batch_load`) spend ~1.3 ms of CPU per request of their own,
reading 300 KB answers in 20 threads under one GIL, on the same two cores as the API. A real client does
that on its own machine; `wrk` does it for ~0.1 ms, so what it measures is closer to the API alone.
`scripts/install.sh` installs it (Debian package `wrk`); without it this part is skipped and says so.
"""

import json
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from stack.process import LOOPBACK

BODIES = 200  # different requests, taken in turn by every connection
MARK = "WRK-RESULT"


@dataclass
class WrkLoad:
    connections: int
    ids_per_request: int
    seconds: float
    requests: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    missing: str = ""  # why it did not run
    output: list[str] = field(default_factory=list)  # wrk's own report, for the record

    @property
    def ids_per_s(self) -> float:
        return self.requests * self.ids_per_request / max(self.seconds, 1e-9)

    def met(self, p99_goal_ms: float) -> bool:
        """Whether every request was answered, without error, and the p99 within the goal."""
        return self.requests > 0 and self.non_2xx == 0 and self.socket_errors == 0 and self.p99_ms <= p99_goal_ms


def _lua(token: str, bodies: list[str]) -> str:
    def quoted(text: str) -> str:
        return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal

    lines = ["local bodies = {", *(f"  {quoted(body)}," for body in bodies), "}"]
    lines += [
        "local headers = {",
        f"  [\"Authorization\"] = {quoted('Bearer ' + token)},",
        '  ["Content-Type"] = "application/json",',
        "}",
        "local n = 0",
        "request = function()",
        "  n = n + 1",
        '  return wrk.format("POST", "/restaurants/status/query", headers, bodies[n % #bodies + 1])',
        "end",
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        f'  io.write(string.format("{MARK} %d %d %d %d %d %d\\n", summary.requests, e.status,',
        "    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), latency.max))",
        "end",
    ]
    return "\n".join(lines) + "\n"


def wrk_load(port: int, token: str, ids: list[str], workdir: Path, result: WrkLoad) -> WrkLoad:
    """Run `wrk` against the API for `result.seconds`; its figures, or why there are none, in `result`."""
    wrk = shutil.which("wrk")
    if wrk is None:
        result.missing = "wrk is not installed (scripts/install.sh apt)"
        return result
    rng = random.Random(7)
    bodies = [json.dumps({"ids": rng.sample(ids, result.ids_per_request)}) for _ in range(BODIES)]
    script = workdir / "batch-status.lua"
    script.write_text(_lua(token, bodies))
    args = [wrk, "--threads", "1", "--connections", str(result.connections), "--duration", f"{result.seconds:.0f}s",
            "--timeout", "10s", "--latency", "--script", str(script), f"http://{LOOPBACK}:{port}"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=result.seconds + 60, check=False)
    result.output = done.stdout.splitlines()
    marked = [line.split()[1:] for line in result.output if line.startswith(MARK)]
    if done.returncode != 0 or not marked:
        result.missing = f"wrk failed ({done.returncode}): {done.stderr.strip()[:200]}"
        return result
    requests, non_2xx, socket_errors, p50, p99, top = (int(v) for v in marked[0])
    result.requests, result.non_2xx, result.socket_errors = requests, non_2xx, socket_errors
    result.p50_ms, result.p99_ms, result.max_ms = p50 / 1000, p99 / 1000, top / 1000  # wrk counts µs
    return result
