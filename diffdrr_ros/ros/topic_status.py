"""Topic frequency, stamp delay and receive gaps, reported as ROS's diagnostic_updater reports them.

``diagnostic_updater`` (``FrequencyStatus``, ``TimeStampStatus``, ``TopicDiagnostic``) is not
installable from PyPI; this module produces the same summaries (levels, messages) and the same
keys, so tools that read ``/diagnostics`` from driver nodes (rqt_runtime_monitor, aggregators,
alert rules) read the registration node's input streams the same way. No ROS import: levels are
the ``diagnostic_msgs/DiagnosticStatus`` byte values (0 OK, 1 WARN, 2 ERROR); the node turns a
:class:`Report` into a ``DiagnosticStatus``.

* :class:`FrequencyStatus`: events counted over the last ``window`` reports; ERROR "No events
  recorded." when none, WARN "Frequency too low." / "Frequency too high." outside
  ``[min_hz * (1 - tolerance), max_hz * (1 + tolerance)]``, else OK "Desired frequency met".
* :class:`TimeStampStatus`: delay = clock now - header stamp of each message since the last report;
  OK "Timestamps are reasonable.", WARN "No data since last update.", ERROR "Timestamps too far in
  future seen." (delay below ``min_acceptable``), "Timestamps too far in past seen." (above
  ``max_acceptable``), "Zero timestamp seen."; the last that applies is the summary.
* :class:`StampGaps` (not in diagnostic_updater): frames missing from a stream, from gaps in the
  header stamps against the stream's own median interval (over 10 x it: a pause in imaging, not
  losses); WARN "Frames missing (stamp gaps)." in a report that saw a new gap.
* :class:`TopicStatus`: the three for one topic, merged as ``CompositeDiagnosticTask`` merges
  (the highest level; messages of the same kind, OK or not OK, joined with ``"; "``), named
  ``"<topic> topic status"`` like ``TopicDiagnostic``.

Thread-safe: ``tick`` comes from subscription callbacks, ``report`` from the diagnostics timer.
"""

from __future__ import annotations

import math
import statistics
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

OK, WARN, ERROR = 0, 1, 2


@dataclass
class Report:
    """One diagnostics update of a task: a level, a summary message and ``(key, value)`` pairs."""

    level: int = OK
    message: str = ""
    values: list[tuple[str, str]] = field(default_factory=list)

    def merge_summary(self, level: int, message: str) -> None:
        """diagnostic_updater's ``mergeSummary``: the higher level wins; same-kind messages are joined."""
        if (level > OK) == (self.level > OK):
            self.message = f"{self.message}; {message}" if self.message else message
        elif level > self.level:
            self.message = message
        self.level = max(self.level, level)


class FrequencyStatus:
    """How often ``tick`` was called, over the last ``window`` reports (``clock``: seconds)."""

    def __init__(self, min_hz: float, max_hz: float | None, tolerance: float = 0.1, window: int = 5,
                 clock: Callable[[], float] | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 report, got {window}")
        if max_hz is not None and max_hz < min_hz:
            raise ValueError(f"max_hz {max_hz} is below min_hz {min_hz}")
        self.min_hz, self.max_hz, self.tolerance, self.window = float(min_hz), max_hz, float(tolerance), int(window)
        self._clock = clock or _monotonic
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.count = 0
            now = self._clock()
            self._times = [now] * self.window
            self._counts = [0] * self.window
            self._index = 0

    def tick(self) -> None:
        with self._lock:
            self.count += 1

    def report(self) -> Report:
        with self._lock:
            now, count = self._clock(), self.count
            events = count - self._counts[self._index]
            duration = now - self._times[self._index]
            freq = events / duration if duration > 0 else (math.inf if events else 0.0)
            self._counts[self._index], self._times[self._index] = count, now
            self._index = (self._index + 1) % self.window
        r = Report()
        low = self.min_hz * (1 - self.tolerance)
        high = None if self.max_hz is None else self.max_hz * (1 + self.tolerance)
        if events == 0:
            r.level, r.message = ERROR, "No events recorded."
        elif freq < low:
            r.level, r.message = WARN, "Frequency too low."
        elif high is not None and freq > high:
            r.level, r.message = WARN, "Frequency too high."
        else:
            r.level, r.message = OK, "Desired frequency met"
        r.values += [("Events in window", f"{events:d}"), ("Events since startup", f"{count:d}"),
                     ("Duration of window (s)", f"{duration:f}"), ("Actual frequency (Hz)", f"{freq:f}")]
        if self.max_hz is not None and self.min_hz == self.max_hz:
            r.values.append(("Target frequency (Hz)", f"{self.min_hz:f}"))
        if self.min_hz > 0:
            r.values.append(("Minimum acceptable frequency (Hz)", f"{low:f}"))
        if high is not None:
            r.values.append(("Maximum acceptable frequency (Hz)", f"{high:f}"))
        return r


class TimeStampStatus:
    """Delays (clock now - header stamp, s) of the messages since the last report."""

    def __init__(self, min_acceptable: float = -1.0, max_acceptable: float = 5.0,
                 clock: Callable[[], float] | None = None) -> None:
        if max_acceptable < min_acceptable:
            raise ValueError(f"max_acceptable {max_acceptable} is below min_acceptable {min_acceptable}")
        self.min_acceptable, self.max_acceptable = float(min_acceptable), float(max_acceptable)
        self._clock = clock or _monotonic
        self._lock = threading.Lock()
        self.early_count = self.late_count = self.zero_count = 0
        self._reset()

    def _reset(self) -> None:
        self._valid, self._zero_seen = False, False
        self._min_delta = self._max_delta = 0.0

    def tick(self, stamp_s: float) -> float | None:
        """One message stamped ``stamp_s`` (s); returns its delay (s), None for a zero stamp."""
        with self._lock:
            if stamp_s == 0:
                self._zero_seen = True
                return None
            delta = self._clock() - stamp_s
            if not self._valid or delta > self._max_delta:
                self._max_delta = delta
            if not self._valid or delta < self._min_delta:
                self._min_delta = delta
            self._valid = True
            return delta

    def report(self) -> Report:
        r = Report(OK, "Timestamps are reasonable.")
        with self._lock:
            if not self._valid:
                r.level, r.message = WARN, "No data since last update."
            else:
                if self._min_delta < self.min_acceptable:
                    r.level, r.message = ERROR, "Timestamps too far in future seen."
                    self.early_count += 1
                if self._max_delta > self.max_acceptable:
                    r.level, r.message = ERROR, "Timestamps too far in past seen."
                    self.late_count += 1
                if self._zero_seen:
                    r.level, r.message = ERROR, "Zero timestamp seen."
                    self.zero_count += 1
            r.values += [("Earliest timestamp delay:", f"{self._min_delta:f}"),
                         ("Latest timestamp delay:", f"{self._max_delta:f}"),
                         ("Earliest acceptable timestamp delay:", f"{self.min_acceptable:f}"),
                         ("Latest acceptable timestamp delay:", f"{self.max_acceptable:f}"),
                         ("Late diagnostic update count:", f"{self.late_count:d}"),
                         ("Early diagnostic update count:", f"{self.early_count:d}"),
                         ("Zero seen diagnostic update count:", f"{self.zero_count:d}")]
            self._reset()
        return r


class StampGaps:
    """Frames missing from a stream: a stamp interval over ``factor`` x the median of the recent ones.

    A camera or C-arm sends at a steady rate while it images; a lost frame (best-effort
    transport, a driver drop) leaves an interval about twice the usual. An interval over
    ``pause_factor`` x the median is a pause in imaging (fluoroscopy is switched on and off),
    counted as such, not as lost frames. The first ``min_intervals`` intervals only learn the
    rate; stamps that do not increase are skipped (the node rejects those frames itself).
    """

    def __init__(self, factor: float = 1.5, history: int = 20, min_intervals: int = 3,
                 pause_factor: float = 10.0) -> None:
        self.factor, self.min_intervals, self.pause_factor = float(factor), int(min_intervals), float(pause_factor)
        self.pauses = 0  # intervals over pause_factor x the median
        self._intervals: deque[float] = deque(maxlen=int(history))
        self._last: float | None = None
        self._lock = threading.Lock()
        self.missing = 0  # frames missing since the start
        self.gaps = 0  # intervals that had frames missing
        self._new_gaps = 0  # since the last report

    def tick(self, stamp_s: float) -> int:
        """One message stamped ``stamp_s`` (s); returns how many frames are missing just before it."""
        with self._lock:
            last, self._last = self._last, stamp_s if self._last is None else max(self._last, stamp_s)
            if last is None or stamp_s <= last:
                return 0
            dt = stamp_s - last
            missing = 0
            if len(self._intervals) >= self.min_intervals:
                median = statistics.median(self._intervals)
                if dt > self.pause_factor * median:
                    self.pauses += 1
                    return 0
                if dt > self.factor * median:
                    missing = max(1, round(dt / median) - 1)
                    self.missing += missing
                    self.gaps += 1
                    self._new_gaps += 1
            if not missing:  # a gap says nothing about the rate
                self._intervals.append(dt)
            return missing

    def median_interval(self) -> float | None:
        with self._lock:
            return statistics.median(self._intervals) if self._intervals else None

    def report(self) -> Report:
        median = self.median_interval()
        with self._lock:
            new, self._new_gaps = self._new_gaps, 0
            r = Report(WARN, "Frames missing (stamp gaps).") if new else Report(OK, "")
            r.values += [("Frames missing (stamp gaps)", f"{self.missing:d}"), ("Stamp gaps", f"{self.gaps:d}"),
                         (f"Pauses (stamp intervals over {self.pause_factor:g} x the median)", f"{self.pauses:d}"),
                         ("Median stamp interval (s)", "unknown" if median is None else f"{median:f}")]
        return r


@dataclass
class TopicStatusParams:
    """Expected rate and stamp delay of one topic (the node's ``topic_status.*`` parameters)."""

    min_hz: float
    max_hz: float | None
    tolerance: float = 0.1
    window: int = 5
    min_delay_s: float = -1.0
    max_delay_s: float = 5.0


class TopicStatus:
    """``TopicDiagnostic`` for one subscribed topic: frequency, stamp delay and stamp gaps."""

    def __init__(self, topic: str, params: TopicStatusParams, clock: Callable[[], float] | None = None,
                 gaps: bool = True) -> None:
        self.topic = topic
        self.name = f"{topic} topic status"
        self.frequency = FrequencyStatus(params.min_hz, params.max_hz, params.tolerance, params.window, clock)
        self.stamps = TimeStampStatus(params.min_delay_s, params.max_delay_s, clock)
        self.gaps = StampGaps() if gaps else None
        self.extra: dict[str, int] = {}  # counters the node adds (e.g. messages lost as DDS reports them)

    def tick(self, stamp_s: float) -> int:
        """A message stamped ``stamp_s`` arrived; returns the frames missing before it (stamp gaps)."""
        self.frequency.tick()
        self.stamps.tick(stamp_s)
        return self.gaps.tick(stamp_s) if self.gaps is not None and stamp_s != 0 else 0

    def report(self) -> Report:
        parts = [self.frequency.report(), self.stamps.report()]
        if self.gaps is not None:
            parts.append(self.gaps.report())
        out = Report()
        for part in parts:
            if part.message:
                out.merge_summary(part.level, part.message)
            out.values += part.values
        out.values += [(k, str(v)) for k, v in self.extra.items()]
        return out


def _monotonic() -> float:
    import time

    return time.monotonic()
