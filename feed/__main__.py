"""`python -m feed`: run one dashboard feed worker until SIGTERM/SIGINT, then drain and stop."""

import asyncio
import logging.config
import signal

from core.settings import Settings
from feed.consumer import FeedConsumer

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"aiormq": {"level": "WARNING"}, "aio_pika": {"level": "WARNING"}, "pymongo": {"level": "WARNING"}},
}


async def main() -> None:
    consumer = FeedConsumer(Settings())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.request_stop)
    await consumer.run()


if __name__ == "__main__":
    logging.config.dictConfig(LOGGING)
    asyncio.run(main())
