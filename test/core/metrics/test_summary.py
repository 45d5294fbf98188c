"""Percentiles of per-frame numbers (one definition for the demo, bag scoring and benchmarks)."""

from diffdrr_ros.core.metrics import percentile


def test_percentile_interpolates_and_empty_is_none():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([0.0, 10.0], 95) == 9.5
    assert percentile([], 50) is None
