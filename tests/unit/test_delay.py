"""The delay line's report (otel_podnet.simnode.delay), as the latency tests read it."""

from __future__ import annotations

import json

import pytest

from otel_podnet.simnode.delay import LATE_MARK_US, Report


def test_report_lists_the_frames_late_over_a_bound() -> None:
    line = json.dumps(
        {"passed": 80, "delayed": 120, "dropped": 0, "late_max_us": 10221, "late_us": [1500, 10221, 8001]}
    )
    r = Report.parse(line)
    assert (r.passed, r.delayed, r.dropped, r.late_max_us) == (80, 120, 0, 10221)
    assert r.late_over(8_000) == (10221, 8001)
    assert r.late_over(LATE_MARK_US) == (1500, 10221, 8001)
    assert r.late_over(20_000) == ()


def test_a_bound_below_the_mark_is_refused() -> None:
    r = Report.parse(json.dumps({"passed": 0, "delayed": 0, "dropped": 0, "late_max_us": 0, "late_us": []}))
    with pytest.raises(ValueError, match=r"late_over\(500\).*1000 us"):
        r.late_over(500)
