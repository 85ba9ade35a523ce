"""Shared timing of the core benchmarks: interleaved runs of fits, median seconds per step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch

from equipoise.core import Fit


def median_step_seconds(fits: Mapping[str, Fit], steps: int, repeats: int, device: str) -> dict[str, float]:
    """Run every fit once to warm up, then ``repeats`` times interleaved (fresh starts); return
    the median wall time per step of each (CUDA synchronised around each run)."""
    for fit in fits.values():
        fit.run(resume=False)
    times: dict[str, list[float]] = {name: [] for name in fits}
    for _ in range(repeats):
        for name, fit in fits.items():
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fit.run(resume=False)
            if device != "cpu":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}
