"""The whole platform under client_sim's churn agrees with the simulator's ground truth (bench/churn.py).

Private servers and the platform's five processes, 200 restaurants (a few closed all day, a few
that open for one minute during the run), crashes, graceful stops, takeovers, flaps, silent apps and
unavailabilities scheduled through the API. The full size is `python -m bench churn`.
"""

import pytest

from bench.churn import churn
from bench.churn_report import ChurnConfig

pytestmark = [pytest.mark.slow, pytest.mark.churn]

REDUCED = ChurnConfig(restaurants=200, closed=5, boundary=5, duration_s=40.0, checkpoint_every_s=8.0)


def test_status_ranking_and_history_match_the_ground_truth() -> None:
    report = churn(REDUCED)
    summary = report.summary()
    checked = [c for c in report.checkpoints if not c["error"]]
    assert len(checked) == len(report.checkpoints) >= 4, summary
    assert all(c["checked"] > 0 for c in checked), summary
    assert report.divergences == [], summary
    assert report.ranking_checked == 210 and report.ranking_off == [], summary
    assert report.transitions > 0 and report.lost_transitions == 0, summary
    assert report.extra_in_history == [], summary
    assert report.lost_in_feed == [] and report.doubled_in_feed == [], summary
    assert sum(report.sim["actions"].values()) > 50, summary
