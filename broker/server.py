"""Running the embedded broker until told to stop."""

import asyncio
import logging

from broker.config import BrokerOptions, broker_config
from broker.guarded_broker import GuardedBroker

logger = logging.getLogger(__name__)


async def serve(options: BrokerOptions, stop: asyncio.Event) -> None:
    """Start the listeners, wait for `stop`, then close every session and listener."""
    broker = GuardedBroker(broker_config(options))
    await broker.start()
    ws = f", ws://{options.host}:{options.ws_port}" if options.ws_port else ""
    logger.info(
        "amqtt broker ready on mqtt://%s:%d%s (passwords from %s)",
        options.host,
        options.port,
        ws,
        options.passwd_file,
    )
    try:
        await stop.wait()
    finally:
        logger.info("amqtt broker stopping")
        await broker.shutdown()
        logger.info("amqtt broker stopped")
