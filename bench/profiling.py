"""Run a module under cProfile in every thread: `python -m bench.profiling OUT_DIR -m MODULE [ARGS...]`.

`python -m cProfile` sees only the main thread, but half of the bridge's work happens in paho's
network thread. Here each thread gets its own profiler and writes `OUT_DIR/<thread name>.prof` when
it ends (the main thread when the module returns), to be read with `pstats` or `summarise()`.
The clock is cProfile's default (wall time): built-ins that release the GIL (`select`, `recv`, `send`,
`epoll.poll`) include the wait for I/O and for the GIL, so read the shares of the Python functions.
(A per-thread CPU clock would be exact but slows the bridge about tenfold, which distorts more.)
"""

import cProfile
import io
import pstats
import runpy
import sys
import threading
from pathlib import Path
from typing import Any


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def profile_threads(out_dir: Path) -> None:
    """From now on every new thread runs under a profiler of its own, dumped when it ends."""
    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        if "process_request_thread" in self.name:  # one per scrape of the metrics page: not worth a file
            original_run(self)
            return
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            original_run(self)
        finally:
            profiler.disable()
            profiler.dump_stats(out_dir / f"{_safe_name(self.name)}-{threading.get_ident()}.prof")

    threading.Thread.run = run  # type: ignore[method-assign]


def summarise(path: Path, top: int = 25) -> str:
    """The functions with the most own time (tottime), as pstats prints them."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit(__doc__)
    out_dir, module, rest = Path(argv[0]), argv[2], argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    profile_threads(out_dir)
    sys.argv = [module, *rest]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        globals_: dict[str, Any] = runpy.run_module(module, run_name="__main__", alter_sys=True)
        del globals_
    finally:
        profiler.disable()
        profiler.dump_stats(out_dir / "main.prof")


if __name__ == "__main__":
    main(sys.argv[1:])
