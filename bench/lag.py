"""Where a run's delays come from: the driving process's own loop lag, and the bridge's message age.

The churn run drives 10,000 simulated devices from the bench's own event loop. When its figures come
out late, these two tell the simulator falling behind (its loop lag) from the bridge falling behind
(the age of the payloads it applies, `bridge_message_age_seconds`).
"""

import asyncio
import time


class LoopLag:
    """How late a 100 ms sleep of this loop wakes up: a busy loop delays every device it drives."""

    def __init__(self, every_s: float = 0.1) -> None:
        self.every_s = every_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.every_s)
            self.samples.append(max(0.0, time.monotonic() - started - self.every_s))

    def figures(self) -> dict[str, float]:
        if not self.samples:
            return {}
        ordered = sorted(self.samples)
        return {"p50": round(ordered[len(ordered) // 2], 3),
                "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
                "max": round(ordered[-1], 3)}  # fmt: skip


def histogram_quantile(samples: dict[str, float], name: str, labels: str, q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` of a scraped Prometheus histogram.

    `labels` is the series' label text without the bucket's, e.g. `kind="birth"`.
    """
    prefix = f"{name}_bucket{{{labels + ',' if labels else ''}le=\""
    buckets = sorted(
        (float("inf") if key[len(prefix):-2] == "+Inf" else float(key[len(prefix):-2]), count)
        for key, count in samples.items() if key.startswith(prefix)
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    wanted = q * buckets[-1][1]
    return next(bound for bound, count in buckets if count >= wanted)
