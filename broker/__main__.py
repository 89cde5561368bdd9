"""`python -m broker`: the embedded amqtt broker with the platform's credentials and ACL."""

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from broker.config import DEFAULT_PORT, DEFAULT_WS_PORT, BrokerOptions
from broker.server import serve
from core.settings import Settings

logger = logging.getLogger("broker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m broker", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--ws-port", type=int, default=DEFAULT_WS_PORT, help="0 disables the WebSocket listener")
    parser.add_argument("--passwd-file", type=Path, help="default: PRESENCE_MOSQUITTO_PASSWD_FILE")
    parser.add_argument("--platform-user", help="default: PRESENCE_MQTT_USERNAME")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


async def run(options: BrokerOptions) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(options, stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # amqtt logs every connection at INFO: thousands of lines in a reconnect storm.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        settings = Settings()
        options = BrokerOptions(
            host=args.host,
            port=args.port,
            ws_port=args.ws_port or None,
            passwd_file=args.passwd_file or settings.mosquitto_passwd_file,
            platform_user=args.platform_user or settings.mqtt_username,
        )
    except ValidationError as exc:
        print(f"broker: invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(options))
    except Exception:
        logger.exception("broker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
