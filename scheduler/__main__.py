"""`python -m scheduler`: run one scheduler until SIGTERM/SIGINT (one leads, others wait), then drain and stop."""

import argparse

from core.settings import Settings
from core.worker_main import run_worker
from scheduler.worker import Scheduler

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instance", default=None, help="name in logs and MQTT client ids (default: random)")
    args = parser.parse_args()
    # APScheduler logs every run of every job at INFO: the safety job alone would say so every 5 s.
    run_worker(lambda: Scheduler(Settings(), args.instance), "apscheduler")
