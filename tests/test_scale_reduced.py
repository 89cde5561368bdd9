"""The scale scenarios of `python -m bench scale` at a reduced size, asserting correctness only.

1,000 sessions over 3 Mosquitto shards from 2 client_sim processes, with the bridge, the API and the
dashboard feed as processes: a storm (every status right, each transition exactly once in both
queues), steady heartbeats, crash / silent drop / silent app detection, the batch status endpoint.
Timings are what the benchmark reports; here only counts and states are checked.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.scale import ScaleConfig, run_scale
from bench.scale_fleet import lower_autogroup
from core.settings import Settings
from stack.backends import Backends
from stack.shards import MosquittoShards


@pytest.fixture
def shards(stack: Backends, tmp_path: Path) -> Iterator[MosquittoShards]:
    with MosquittoShards(tmp_path / "shards", 3, stack.passwd_file, stack.platform_user) as started:
        yield started


def test_reduced_scale_scenarios(settings: Settings, shards: MosquittoShards, tmp_path: Path) -> None:
    config = ScaleConfig.reduced()
    n = config.sessions
    result = run_scale(settings, shards, tmp_path, config)

    # Storm: every session connected, every status right (Redis and the API), each transition once.
    assert result.sims == 2
    assert result.storm_connected == n
    assert result.storm_reconnects == 0
    assert result.storm_right_count == n
    assert result.storm_api_online == n
    for queue in (settings.dashboard_queue, settings.aggregator_queue):
        assert result.queues[queue] == {"DEVICE_ONLINE": n, "STATUS_CHANGED": n}, queue
        assert result.once_each[queue] == n, result.not_once[queue]

    # Steady: the bridge took the fleet's heartbeats; the probes' heartbeats reached Redis.
    assert result.heartbeat_rate > 0
    p = result.probes
    assert not p.errors
    assert p.heartbeat_ms and p.heartbeat_missed == 0

    # Detection: every crash, silent drop and silent app ended as DISCONNECTED, the crashes also on
    # the dashboard websocket; the silent apps' sessions stayed open all along.
    assert len(p.crash_ms) == config.crash_samples and p.crash_missed == 0
    assert len(p.crash_ws_ms) == config.crash_samples and p.ws_missed == 0
    assert len(p.drop_s) == config.silent_probes and p.drop_missed == 0
    assert len(p.app_s) == config.silent_probes and p.app_missed == 0
    assert p.app_pings_answered
    # A silent app is not taken for offline before its window is over.
    assert min(p.app_s) >= config.window_s - 1

    # Batch status: every answer had exactly the ids asked, in order.
    assert result.batch is not None
    assert result.batch.wrong_answers == 0 and not result.batch.errors
    assert len(result.batch.latencies_ms) == config.batch_clients * config.batch_requests

    # Nothing went wrong in the platform's own logs, and no process came near the open-file limit.
    assert all(not lines for lines in result.log_problems.values()), result.log_problems
    assert max(max(v) for v in result.open_files.values() if v) < 20_000


def test_a_simulators_session_group_gets_the_niceness_asked(tmp_path: Path) -> None:
    # Each simulator leads a session of its own; with autogroup scheduling a process's own nice does not
    # weigh against other sessions, so the fleet lowers the group's (docs/benchmarks.md §13).
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        group = Path(f"/proc/{child.pid}/autogroup")
        if not group.exists():
            pytest.skip("this kernel schedules without autogroups: the processes' own nice applies")
        assert group.read_text().split()[-1] == "0"
        lower_autogroup(child.pid, 10)
        assert group.read_text().split()[-1] == "10"
    finally:
        child.kill()
        child.wait()
