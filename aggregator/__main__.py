"""`python -m aggregator`: run the history aggregator until SIGTERM/SIGINT, then drain and stop."""

from aggregator.worker import Aggregator
from core.settings import Settings
from core.worker_main import run_worker

if __name__ == "__main__":
    run_worker(lambda: Aggregator(Settings()))
