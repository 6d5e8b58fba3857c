"""Latency summaries: percentiles over recorded per-request seconds."""

from __future__ import annotations

import math

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def summarize_latencies(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """``{"mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms"}``; NaN when empty."""
    values = np.asarray(seconds, dtype=np.float64)
    if values.size == 0:
        nan = math.nan
        return {"mean_ms": nan, **{f"p{p}_ms": nan for p in PERCENTILES}, "max_ms": nan}
    ms = values * 1e3
    out = {"mean_ms": float(ms.mean())}
    for p, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES), strict=True):
        out[f"p{p}_ms"] = float(v)
    out["max_ms"] = float(ms.max())
    return out
