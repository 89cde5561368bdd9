"""`python -m bench burst` at a reduced size: every restaurant opened once, on every path, and the run ends.

Its benchmark once waited out its whole time limit at every size: it took a restaurant for cleared when
its hash held exactly four fields, and the status views added three (bench/opening_burst.py). Here the
run must finish, so a bench that can no longer see its own end fails the suite.
"""

from bench.opening_burst import burst_benchmark

RESTAURANTS = 300


def test_an_opening_burst_is_measured_to_its_end_with_one_event_each() -> None:
    result = burst_benchmark(RESTAURANTS, timeout=60.0)
    assert result.done_s is not None, "the burst never finished within 60 s of the opening"
    for reached in (result.committed_s, result.events_s, result.retained_s, result.cleared_s):
        assert reached is not None and reached <= result.done_s
    assert set(result.queued.values()) == {RESTAURANTS}, result.queued  # both queues, once each
    assert result.wrong_since == 0
    assert result.log_problems == []
