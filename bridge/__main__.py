"""`python -m bridge`: run one bridge instance until SIGTERM/SIGINT, then drain and stop."""

import argparse

from bridge.worker import Bridge
from core.settings import Settings
from core.worker_main import run_worker

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--instance", default="main", help="stable name: the MQTT session and its queue survive restarts under it"
    )
    args = parser.parse_args()
    run_worker(lambda: Bridge(Settings(), args.instance))
