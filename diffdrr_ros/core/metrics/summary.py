"""Summaries of per-frame numbers (latencies, errors) for reports and JSON."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``; None when empty (JSON null)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


__all__ = ["percentile"]
