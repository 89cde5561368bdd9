"""What every `python -m <worker>` entry point does: log to stderr, run until SIGTERM/SIGINT, drain."""

import asyncio
import logging.config
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

QUIET = ("aiormq", "aio_pika", "pymongo")  # chatty at INFO about every connection and retry


class Worker(Protocol):
    def request_stop(self) -> None: ...

    def run(self) -> Coroutine[Any, Any, None]: ...


def configure_logging(*quiet: str) -> None:
    """One plain line per record on stderr; the libraries in QUIET (and `quiet`) only from WARNING."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
            "root": {"handlers": ["stderr"], "level": "INFO"},
            "loggers": {name: {"level": "WARNING"} for name in (*QUIET, *quiet)},
        }
    )


def run_worker(make: Callable[[], Worker], *quiet: str) -> None:
    """Configure logging, build the worker inside the loop, and run it; SIGTERM/SIGINT ask it to stop."""
    configure_logging(*quiet)

    async def main() -> None:
        worker = make()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        await worker.run()

    asyncio.run(main())
