"""`presence`: provision restaurants and users for operators; prints what it created as JSON.

Settings come from the PRESENCE_* environment (core.settings.Settings); logs go to stderr so that
stdout stays machine-readable.
"""

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from core.db import open_mongo
from core.errors import PresenceError
from core.provisioning import (
    RestaurantSpec,
    provision_demo,
    provision_restaurants,
    provision_user,
    sync_password_file,
)
from core.settings import Settings

logger = logging.getLogger("presence")

Command = Callable[[Settings, argparse.Namespace], Awaitable[Any]]


async def restaurant_add(settings: Settings, args: argparse.Namespace) -> Any:
    spec = RestaurantSpec(restaurant_id=args.restaurant_id, group=args.group, timezone=args.timezone)
    created = await provision_restaurants(settings, [spec], rotate=args.rotate)
    return created[0]


async def restaurant_bulk(settings: Settings, args: argparse.Namespace) -> Any:
    groups = [group.strip() for group in args.groups.split(",") if group.strip()] or ["A"]
    width = max(4, len(str(args.start + args.count - 1)))
    specs = [
        RestaurantSpec(
            restaurant_id=f"{args.prefix}{args.start + n:0{width}d}",
            group=groups[n % len(groups)],
            timezone=args.timezone,
        )
        for n in range(args.count)
    ]
    return await provision_restaurants(settings, specs, rotate=args.rotate)


async def user_add(settings: Settings, args: argparse.Namespace) -> Any:
    return await provision_user(settings, args.username, args.password, args.role, rotate=args.rotate)


async def demo(settings: Settings, args: argparse.Namespace) -> Any:
    return await provision_demo(settings, args.count)


async def sync_passwd(settings: Settings, args: argparse.Namespace) -> Any:
    return await sync_password_file(settings)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="presence", description="Provision restaurants and users.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    restaurant = commands.add_parser("restaurant", help="create restaurants").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = restaurant.add_parser("add", help="one restaurant; prints its secret")
    add.add_argument("restaurant_id")
    add.add_argument("--group", default="A")
    add.add_argument("--timezone", help="IANA zone; default PRESENCE_DEFAULT_TIMEZONE")
    add.add_argument("--rotate", action="store_true", help="if it exists, give it a new secret")
    add.set_defaults(run=restaurant_add)

    bulk = restaurant.add_parser("bulk", help="many restaurants <prefix>0001…; prints their secrets")
    bulk.add_argument("--count", type=positive_int, required=True)
    bulk.add_argument("--prefix", required=True)
    bulk.add_argument("--start", type=positive_int, default=1, help="first number (default 1)")
    bulk.add_argument("--groups", default="A", help="comma-separated, assigned round robin (default A)")
    bulk.add_argument("--timezone")
    bulk.add_argument("--rotate", action="store_true", help="give existing ones new secrets")
    bulk.set_defaults(run=restaurant_bulk)

    user = commands.add_parser("user", help="create logins").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    user_parser = user.add_parser("add", help="a sales or admin login; prints its password")
    user_parser.add_argument("username")
    user_parser.add_argument("--role", required=True, choices=["sales", "admin"])
    user_parser.add_argument("--password", help="default: a new random one")
    user_parser.add_argument("--rotate", action="store_true", help="if it exists, set a new password")
    user_parser.set_defaults(run=user_add)

    demo_parser = commands.add_parser("demo", help="demo restaurants and logins, kept in var/demo-credentials.json")
    demo_parser.add_argument("--count", type=positive_int, default=200)
    demo_parser.set_defaults(run=demo)

    sync = commands.add_parser("sync-passwd", help="rewrite the Mosquitto password file's entries from MongoDB")
    sync.set_defaults(run=sync_passwd)
    return parser


async def execute(settings: Settings, command: Command, args: argparse.Namespace) -> Any:
    client = await open_mongo(settings)
    try:
        return await command(settings, args)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"presence: error: invalid PRESENCE_* settings: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(execute(settings, args.run, args))
    except PresenceError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 1
    except PyMongoError as exc:
        print(f"presence: error: MongoDB (PRESENCE_MONGO_URL) failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"presence: error: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
