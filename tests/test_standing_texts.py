"""The texts of the views that stand at the latest instant read (core/standing_texts.py): exact, and complete."""

from hypothesis import given
from hypothesis import strategies as st

from core.standing_texts import StandingTexts
from core.view_facts import MOVING, ViewFacts

WINDOW_US = 60_000_000
IDS = [f"r{n}" for n in range(6)]


def facts(lo: int, hi: int, text: str, window: int = WINDOW_US) -> ViewFacts:
    """A view without devices: it stands from `lo` to `hi`, showing `text`."""
    return ViewFacts(lo, hi, window, 0, 0, (), text)


def served(view: ViewFacts | None, now: int) -> str | None:
    """What the caller would serve from the held texts: a standing, fixed text of the readers' window."""
    if view is None or view.moving or view.window != WINDOW_US:
        return None
    return view.shown if view.lo <= now < view.hi else None


instants = st.integers(min_value=0, max_value=40)


@st.composite
def views(draw: st.DrawFn) -> ViewFacts:
    """A view of the readers' window with a fixed text, or one with a moving `until`, or of another window."""
    lo = draw(instants)
    hi = lo + draw(st.integers(min_value=0, max_value=15))
    kind = draw(st.sampled_from(["fixed", "fixed", "moving", "other window"]))
    text = f"v{draw(st.integers(min_value=0, max_value=10**6))}"
    if kind == "moving":
        return facts(lo, hi, text + MOVING)
    return facts(lo, hi, text, WINDOW_US + 1 if kind == "other window" else WINDOW_US)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(IDS), st.one_of(st.none(), views())),
        st.tuples(st.just("drop"), st.sampled_from(IDS), st.none()),
        st.tuples(st.just("read"), instants, st.none()),
    ),
    max_size=60,
)


@given(steps)
def test_held_texts_are_what_each_view_serves_and_none_is_missing_from_the_latest_instant_on(
    plan: list[tuple[str, object, ViewFacts | None]],
) -> None:
    current: dict[str, ViewFacts | None] = {}
    held = StandingTexts(WINDOW_US, current)
    latest = 0
    for action, what, view in plan:
        if action == "add":
            assert isinstance(what, str)
            current[what] = view
            held.add(what, view)
        elif action == "drop":
            assert isinstance(what, str)
            current.pop(what, None)
            held.drop(what)
        else:
            assert isinstance(what, int)
            texts = held.get(IDS, what)
            latest = max(latest, what)
            if texts is None:
                assert what < latest, "only a read before the latest instant may be refused"
                continue
            for rid, text in zip(IDS, texts, strict=True):
                expected = served(current.get(rid), what)
                if text is not None:
                    assert text == expected, f"{rid} at {what}: held {text!r}, the view serves {expected!r}"
                elif what == latest:
                    assert expected is None, f"{rid} at {what}: its view stands ({expected!r}) but is not held"


def test_a_view_enters_at_its_start_leaves_at_its_end_and_a_replaced_one_leaves_at_once() -> None:
    current: dict[str, ViewFacts | None] = {}
    held = StandingTexts(WINDOW_US, current)
    assert held.get(["a"], 5) == [None]
    current["a"] = first = facts(10, 20, "first")
    held.add("a", first)
    assert held.get(["a"], 9) == [None], "not before its start"
    assert held.get(["a"], 10) == ["first"]
    assert held.get(["a"], 19) == ["first"]
    assert held.get(["a"], 20) == [None], "not from its end on"
    current["a"] = second = facts(15, 40, "second")
    held.add("a", second)
    assert held.get(["a"], 21) == ["second"]
    assert held.get(["a"], 16) == ["second"], "an earlier read, still after every start held"
    assert held.get(["a"], 12) is None, "before the latest start held: the caller judges"
    current["a"] = third = facts(0, 100, "third")
    held.add("a", third)
    assert held.get(["a"], 39) == ["third"], "the second view's end does not take the third one out"
    assert held.get(["a"], 45) == ["third"]
    del current["a"]
    held.drop("a")
    assert held.get(["a"], 46) == [None]
    assert len(held) == 0
