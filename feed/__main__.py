"""`python -m feed`: run one dashboard feed worker until SIGTERM/SIGINT, then drain and stop."""

from core.settings import Settings
from core.worker_main import run_worker
from feed.consumer import FeedConsumer

if __name__ == "__main__":
    run_worker(lambda: FeedConsumer(Settings()))
