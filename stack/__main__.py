"""`python -m stack run` (the whole platform, `make run`) and `python -m stack write-deploy-files`."""

import argparse
import logging
import sys
from pathlib import Path

from stack.mosquitto_config import mosquitto_acl, production_conf
from stack.platform import run
from stack.services import REPO_ROOT


def write_deploy_files() -> int:
    """Regenerate the repo-root mosquitto.conf and deploy/mosquitto.acl from stack.mosquitto_config."""
    (REPO_ROOT / "mosquitto.conf").write_text(production_conf())
    (REPO_ROOT / "deploy").mkdir(exist_ok=True)
    (REPO_ROOT / "deploy" / "mosquitto.acl").write_text(mosquitto_acl("platform"))
    print("wrote mosquitto.conf and deploy/mosquitto.acl")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every service start and stop")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = commands.add_parser("run", help="the whole platform on loopback with 200 demo restaurants")
    run_parser.add_argument(
        "--broker", choices=["mosquitto", "amqtt"], default="mosquitto", help="MQTT broker for devices and the bridge"
    )
    run_parser.add_argument("--var-dir", type=Path, help="state directory (default PRESENCE_VAR_DIR or var/)")
    run_parser.add_argument(
        "--free-ports",
        action="store_true",
        help="unused ports instead of the fixed ones, beside another run (with its own --var-dir)",
    )
    commands.add_parser("write-deploy-files", help="regenerate mosquitto.conf and deploy/mosquitto.acl")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "write-deploy-files":
        return write_deploy_files()
    return run(args.broker, args.var_dir, args.free_ports)


if __name__ == "__main__":
    sys.exit(main())
