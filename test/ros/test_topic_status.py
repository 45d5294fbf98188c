"""Topic frequency / stamp-delay / stamp-gap status: diagnostic_updater's keys, messages and levels."""

from __future__ import annotations

import pytest

from diffdrr_ros.ros.topic_status import (
    ERROR,
    OK,
    WARN,
    FrequencyStatus,
    Report,
    StampGaps,
    TimeStampStatus,
    TopicStatus,
    TopicStatusParams,
)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


FREQ_KEYS = ["Events in window", "Events since startup", "Duration of window (s)", "Actual frequency (Hz)"]
STAMP_KEYS = ["Earliest timestamp delay:", "Latest timestamp delay:", "Earliest acceptable timestamp delay:",
              "Latest acceptable timestamp delay:", "Late diagnostic update count:", "Early diagnostic update count:",
              "Zero seen diagnostic update count:"]


def _run_at(rate_hz: float, clock: Clock, status: FrequencyStatus, seconds: float = 2.0) -> None:
    n = round(rate_hz * seconds)
    for _ in range(n):
        clock.t += 1.0 / rate_hz
        status.tick()


@pytest.mark.parametrize("rate,level,message", [
    (10.0, OK, "Desired frequency met"),
    (1.0, WARN, "Frequency too low."),
    (100.0, WARN, "Frequency too high."),
])
def test_frequency_levels(rate, level, message):
    clock = Clock()
    f = FrequencyStatus(5.0, 20.0, tolerance=0.1, window=1, clock=clock)
    _run_at(rate, clock, f)
    r = f.report()
    assert (r.level, r.message) == (level, message)
    values = dict(r.values)
    assert [k for k, _ in r.values] == [*FREQ_KEYS, "Minimum acceptable frequency (Hz)",
                                        "Maximum acceptable frequency (Hz)"]
    assert float(values["Actual frequency (Hz)"]) == pytest.approx(rate, rel=1e-6)
    assert float(values["Minimum acceptable frequency (Hz)"]) == pytest.approx(4.5)
    assert float(values["Maximum acceptable frequency (Hz)"]) == pytest.approx(22.0)
    assert values["Events since startup"] == str(round(rate * 2))


def test_frequency_tolerance_and_no_events_and_target():
    clock = Clock()
    f = FrequencyStatus(10.0, 10.0, tolerance=0.1, window=2, clock=clock)
    _run_at(9.2, clock, f)  # within 10 % below the target
    r = f.report()
    assert r.level == OK and dict(r.values)["Target frequency (Hz)"] == f"{10.0:f}"
    clock.t += 5.0
    r = f.report()  # window of 2 reports: the 9.2 Hz events still count, over a longer window
    assert r.level == WARN and r.message == "Frequency too low."
    clock.t += 5.0
    r = f.report()
    assert (r.level, r.message) == (ERROR, "No events recorded.")
    assert dict(r.values)["Events in window"] == "0"


def test_frequency_min_zero_has_no_minimum_key():
    f = FrequencyStatus(0.0, None, clock=Clock())
    f.tick()
    keys = [k for k, _ in f.report().values]
    assert keys == FREQ_KEYS


def test_timestamp_status_levels():
    clock = Clock(1000.0)
    s = TimeStampStatus(-1.0, 5.0, clock)
    r = s.report()
    assert (r.level, r.message) == (WARN, "No data since last update.")
    assert [k for k, _ in r.values] == STAMP_KEYS
    s.tick(999.5)  # 0.5 s old
    r = s.report()
    assert (r.level, r.message) == (OK, "Timestamps are reasonable.")
    assert float(dict(r.values)["Latest timestamp delay:"]) == pytest.approx(0.5)
    s.tick(990.0)  # 10 s old
    r = s.report()
    assert (r.level, r.message) == (ERROR, "Timestamps too far in past seen.")
    assert dict(r.values)["Late diagnostic update count:"] == "1"
    s.tick(1003.0)  # 3 s in the future
    r = s.report()
    assert (r.level, r.message) == (ERROR, "Timestamps too far in future seen.")
    assert dict(r.values)["Early diagnostic update count:"] == "1"
    assert float(dict(r.values)["Earliest timestamp delay:"]) == pytest.approx(-3.0)
    s.tick(0.0)
    r = s.report()
    assert (r.level, r.message) == (WARN, "No data since last update.")  # a zero stamp alone is no delay data
    s.tick(0.0)
    s.tick(999.9)
    r = s.report()
    assert (r.level, r.message) == (ERROR, "Zero timestamp seen.")
    assert dict(r.values)["Zero seen diagnostic update count:"] == "1"
    with pytest.raises(ValueError):
        TimeStampStatus(1.0, 0.0)


def test_stamp_gaps_count_missing_frames():
    g = StampGaps()
    stamps = [100.0 + 0.5 * k for k in range(6)]  # 2 Hz
    assert [g.tick(s) for s in stamps] == [0] * 6
    assert g.report().level == OK
    assert g.tick(stamps[-1] + 1.5) == 2  # two frames of 0.5 s missing
    assert g.tick(stamps[-1] + 2.0) == 0
    assert g.tick(stamps[-1] + 1.0) == 0  # out of order: ignored
    r = g.report()
    assert (r.level, r.message) == (WARN, "Frames missing (stamp gaps).")
    assert dict(r.values)["Frames missing (stamp gaps)"] == "2"
    assert dict(r.values)["Stamp gaps"] == "1"
    assert float(dict(r.values)["Median stamp interval (s)"]) == pytest.approx(0.5)
    assert g.report().level == OK  # only a report with a new gap warns
    assert g.tick(stamps[-1] + 30.0) == 0  # fluoroscopy off for half a minute: a pause, not 55 lost frames
    r = g.report()
    assert r.level == OK and dict(r.values)["Pauses (stamp intervals over 10 x the median)"] == "1"
    assert dict(r.values)["Frames missing (stamp gaps)"] == "2"


def test_merge_summary_as_composite_task():
    r = Report()
    r.merge_summary(OK, "Desired frequency met")
    r.merge_summary(OK, "Timestamps are reasonable.")
    assert (r.level, r.message) == (OK, "Desired frequency met; Timestamps are reasonable.")
    r.merge_summary(ERROR, "No events recorded.")
    r.merge_summary(WARN, "No data since last update.")
    r.merge_summary(OK, "ignored")
    assert (r.level, r.message) == (ERROR, "No events recorded.; No data since last update.")


def test_topic_status_merges_its_parts():
    clock = Clock(1000.0)
    ts = TopicStatus("/fluoro/image", TopicStatusParams(1.0, 30.0, window=1), clock)
    assert ts.name == "/fluoro/image topic status"
    for _ in range(10):
        clock.t += 0.5
        ts.tick(clock.t - 0.1)
    r = ts.report()
    assert (r.level, r.message) == (OK, "Desired frequency met; Timestamps are reasonable.")
    keys = [k for k, _ in r.values]
    assert set(FREQ_KEYS + STAMP_KEYS) <= set(keys) and "Frames missing (stamp gaps)" in keys
    clock.t += 2.0
    ts.tick(clock.t - 0.1)  # three frames missing before this one
    r = ts.report()
    assert r.level == WARN and "Frames missing (stamp gaps)." in r.message
    assert dict(r.values)["Frames missing (stamp gaps)"] == "3"
    clock.t += 3.0
    r = ts.report()
    assert r.level == ERROR and r.message == "No events recorded.; No data since last update."
