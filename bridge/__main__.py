"""`python -m bridge`: run one bridge instance until SIGTERM/SIGINT, then drain and stop."""

import argparse
import asyncio
import logging.config
import signal

from bridge.worker import Bridge
from core.settings import Settings

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"aiormq": {"level": "WARNING"}, "aio_pika": {"level": "WARNING"}, "pymongo": {"level": "WARNING"}},
}


async def main(instance: str | None) -> None:
    bridge = Bridge(Settings(), instance)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, bridge.request_stop)
    await bridge.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--instance", default="main", help="stable name: the MQTT session and its queue survive restarts under it"
    )
    args = parser.parse_args()
    logging.config.dictConfig(LOGGING)
    asyncio.run(main(args.instance))
