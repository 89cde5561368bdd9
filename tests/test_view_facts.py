"""A view's stretch worked out when it is parsed (core/view_facts.py) answers as the rule would."""

from hypothesis import given
from hypothesis import strategies as st

from core.view_facts import MOVING, SEEN, ViewFacts

WINDOW = 60_000_000
TEXT = f'{{"online":true,"until":{MOVING},"last_seen":{SEEN},"devices_connected":1}}'
STAMPS = st.one_of(st.none(), st.integers(min_value=0, max_value=400_000_000))


@st.composite
def facts(draw: st.DrawFn) -> ViewFacts:
    seen = tuple(draw(st.lists(STAMPS, max_size=4)))
    connected = draw(st.integers(min_value=0, max_value=len(seen)))
    lapsed = draw(st.integers(min_value=0, max_value=len(seen) - connected))
    t0 = draw(st.integers(min_value=0, max_value=300_000_000))
    till = t0 + draw(st.integers(min_value=0, max_value=300_000_000))
    window = draw(st.sampled_from([WINDOW, WINDOW // 2]))
    return ViewFacts(t0, till, window, connected, lapsed, seen, TEXT)


def instants(view: ViewFacts) -> set[int]:
    """Every edge a reader could fall on either side of, and a few instants between."""
    edges = {view.t0, view.till, view.lo, view.hi}
    for at in view.seen_us:
        if at is not None:
            edges |= {at, at + view.window}
    return {t + d for t in edges for d in (-1, 0, 1)} | {0, 250_000_000, 10**9}


@given(view=facts(), extra=st.lists(st.integers(min_value=0, max_value=10**9), max_size=5))
def test_the_stretch_gives_what_the_rule_gives(view: ViewFacts, extra: list[int]) -> None:
    for now in sorted(instants(view) | set(extra)):
        for window in (WINDOW, WINDOW // 2):
            assert view.serve(now, window) == view.judge(now, window), (now, window)
            if view.lo <= now < view.hi and window == view.window:
                assert view.shown == view.judge(now, window), "the stretch serves what the rule would"


def test_a_stamp_ahead_of_the_reader_ends_the_stretch() -> None:
    # Connected at t0 = 100 s, its last seen 130 s: shown only once the reader's clock has passed it.
    view = ViewFacts(100_000_000, 400_000_000, WINDOW, 1, 0, (130_000_000,), TEXT)
    assert (view.lo, view.hi) == (100_000_000, 130_000_000)
    assert SEEN not in view.shown and '"last_seen":null' in view.shown
    assert '"last_seen":"1970-01-01T00:02:10Z"' in (view.serve(131_000_000, WINDOW) or "")
    assert view.serve(190_000_000, WINDOW) is None, "not heard for a whole window: derive"


def test_a_connected_device_never_heard_leaves_no_stretch() -> None:
    view = ViewFacts(100, 400, WINDOW, 1, 0, (None,), TEXT)
    assert view.lo >= view.hi
    assert view.serve(200, WINDOW) is None
