"""drp.modelvalues.time_text: the text datetime would make, at a fraction of its cost."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings, strategies as st

from drp.modelvalues import TIME_FORMAT, now_text, parse_time, time_text


def reference(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime(TIME_FORMAT)


@settings(max_examples=3000)
@given(st.floats(min_value=-62135596800.0, max_value=253402300799.0))
def test_time_text_is_what_datetime_writes(when):
    assert time_text(when) == reference(when)


@given(st.integers(min_value=0, max_value=4_000_000_000), st.integers(0, 999_999),
       st.sampled_from([-5e-7, -1e-7, 0.0, 1e-7, 4.9999e-7, 5e-7, 5.0001e-7]))
def test_time_text_rounds_at_the_microsecond_as_datetime_does(second, micro, nudge):
    when = second + micro / 1e6 + nudge  # near a tie between two microseconds
    assert time_text(when) == reference(when)


def test_now_text_is_now_in_rfc3339():
    before = time.time()
    when = parse_time(now_text())
    assert when is not None and when.tzinfo is not None
    assert before - 1 <= when.timestamp() <= time.time() + 1
    assert now_text().endswith("Z") and len(now_text()) == len("2026-12-03T11:20:27.000000Z")


@pytest.mark.parametrize("when, error", [(float("nan"), ValueError), (float("inf"), OverflowError),
                                         (float("-inf"), OverflowError)])
def test_time_text_refuses_what_datetime_refuses(when, error):
    with pytest.raises(error):
        reference(when)
    with pytest.raises(error):
        time_text(when)
