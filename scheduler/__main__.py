"""`python -m scheduler`: run one scheduler until SIGTERM/SIGINT (one leads, others wait), then drain and stop."""

import argparse
import asyncio
import logging.config
import signal

from core.settings import Settings
from scheduler.worker import Scheduler

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {
        # APScheduler logs every run of every job at INFO: the safety job alone would say so every 5 s.
        "apscheduler": {"level": "WARNING"},
        "aiormq": {"level": "WARNING"},
        "aio_pika": {"level": "WARNING"},
        "pymongo": {"level": "WARNING"},
    },
}


async def main(instance: str | None) -> None:
    scheduler = Scheduler(Settings(), instance)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, scheduler.request_stop)
    await scheduler.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instance", default=None, help="name in logs and MQTT client ids (default: random)")
    args = parser.parse_args()
    logging.config.dictConfig(LOGGING)
    asyncio.run(main(args.instance))
