"""The whole platform under client_sim's churn agrees with the simulator's ground truth (bench/churn.py):
once as it is, and once per fault, each run ending with nothing lost.

- As it is: 200 restaurants for 40 s (a few closed all day, a few that open for one minute during the
  run), crashes, graceful stops, takeovers, flaps, silent apps and unavailabilities scheduled through
  the API. The full size is `python -m bench churn`.
- With a fault: 60 restaurants for 30 s, the fault 8 s in (FerretDB: 6 s in, for 30 s, in a 50 s
  run): the bridge killed, Redis restarted empty, RabbitMQ and the broker restarted, FerretDB
  stopped. Checkpoints taken while the fault lasts (and a few seconds after) are reported apart, not
  asserted: the platform is allowed its documented recovery. What the platform could not know during
  an outage is tolerated as bench/churn.py says (two truths); nothing else.

Each run is the whole platform on its own private servers, in a worker process of its own, two at a
time: one run keeps about a core busy at most. When the plain run went alone after the five fault
runs, the six took 243 s with a core idle; in one pool, 200 s. The runs of the selected tests start
together when the first of them needs its report, and nothing else runs meanwhile.
"""

import dataclasses
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pytest

from bench.churn import churn
from bench.churn_faults import FAULTS, Fault
from bench.churn_report import ChurnConfig, ChurnReport

pytestmark = [pytest.mark.slow, pytest.mark.churn, pytest.mark.timeout(300)]

AT_ONCE = 2
REDUCED = ChurnConfig(restaurants=200, closed=5, boundary=5, duration_s=40.0, checkpoint_every_s=8.0)
FAULT_RUN = ChurnConfig(restaurants=60, closed=3, boundary=3, duration_s=30.0, checkpoint_every_s=10.0,
                        churn_rate=3.0)  # fmt: skip


def run_plain() -> ChurnReport:
    return churn(REDUCED)


def run_with(name: str, at_s: float = 8.0, recovery_s: float = 5.0,
             duration_s: float = FAULT_RUN.duration_s) -> ChurnReport:  # fmt: skip
    config = dataclasses.replace(FAULT_RUN, duration_s=duration_s)
    return churn(config, [Fault(name, at_s, FAULTS[name], recovery_s)])


# test → (run, its keyword arguments); the longest first, so that the last two finish together.
RUNS: dict[str, tuple[Callable[..., ChurnReport], dict[str, Any]]] = {
    "test_ferretdb_stopped_for_30_s": (run_with, {"name": "ferretdb", "at_s": 6.0, "duration_s": 50.0}),
    "test_status_ranking_and_history_match_the_ground_truth": (run_plain, {}),
    # A session left silent when Redis was lost counts as heard from at the rebuild: one window more.
    "test_redis_restarted_empty": (run_with, {"name": "redis", "recovery_s": FAULT_RUN.stale_after_s + 2.0}),
    "test_broker_restarted": (run_with, {"name": "broker", "recovery_s": FAULT_RUN.stale_after_s + 2.0}),
    "test_bridge_killed_and_restarted": (run_with, {"name": "kill-bridge"}),
    "test_rabbitmq_restarted": (run_with, {"name": "rabbitmq"}),
}


@pytest.fixture(scope="module")
def reports(request: pytest.FixtureRequest) -> Iterator[dict[str, Future[ChurnReport]]]:
    """The selected tests' runs, started together when the first of them needs its report."""
    selected = {item.name for item in request.session.items if item.module is request.module}
    with ProcessPoolExecutor(AT_ONCE, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield {test: pool.submit(run, **kwargs) for test, (run, kwargs) in RUNS.items() if test in selected}


def report_of(reports: dict[str, Future[ChurnReport]], request: pytest.FixtureRequest) -> ChurnReport:
    return reports[request.node.name].result(timeout=280)


def assert_whole(report: ChurnReport) -> None:
    summary = report.summary()
    assert len(report.faults) == 1, summary
    recovered = report.faults[0].recovered_s
    after = [c for c in report.checkpoints if c["at_s"] > recovered and not c["during_fault"]]
    assert after and all(not c["error"] and c["checked"] > 0 for c in after), summary
    assert report.divergences == [], summary
    assert report.ranking_off == [], summary
    assert report.transitions > 0 and report.lost_transitions == 0, summary
    assert report.extra_in_history == [] and report.before_creation == [], summary


def test_status_ranking_and_history_match_the_ground_truth(reports: dict[str, Future[ChurnReport]],
                                                           request: pytest.FixtureRequest) -> None:  # fmt: skip
    report = report_of(reports, request)
    summary = report.summary()
    checked = [c for c in report.checkpoints if not c["error"]]
    assert len(checked) == len(report.checkpoints) >= 4, summary
    assert all(c["checked"] > 0 for c in checked), summary
    assert report.divergences == [], summary
    assert report.ranking_checked == 210 and report.ranking_off == [], summary
    assert report.transitions > 0 and report.lost_transitions == 0, summary
    assert report.extra_in_history == [] and report.before_creation == [], summary
    assert report.lost_in_feed == [] and report.doubled_in_feed == [], summary
    assert sum(report.sim["actions"].values()) > 50, summary


def test_ferretdb_stopped_for_30_s(reports: dict[str, Future[ChurnReport]], request: pytest.FixtureRequest) -> None:
    assert_whole(report_of(reports, request))


def test_redis_restarted_empty(reports: dict[str, Future[ChurnReport]], request: pytest.FixtureRequest) -> None:
    report = report_of(reports, request)
    assert "converge_s" in report.faults[0].figures, report.summary()
    assert_whole(report)


def test_broker_restarted(reports: dict[str, Future[ChurnReport]], request: pytest.FixtureRequest) -> None:
    assert_whole(report_of(reports, request))


def test_bridge_killed_and_restarted(reports: dict[str, Future[ChurnReport]], request: pytest.FixtureRequest) -> None:
    assert_whole(report_of(reports, request))


def test_rabbitmq_restarted(reports: dict[str, Future[ChurnReport]], request: pytest.FixtureRequest) -> None:
    assert_whole(report_of(reports, request))
