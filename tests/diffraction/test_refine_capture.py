"""The capture bar, one cell (slow): the default refine from a 10° start on a 512² detector, the
observed image from another domain draw with Poisson noise (benchmarks/diffraction_capture.py
measures the whole table)."""

from __future__ import annotations

import pytest

from equipoise.diffraction.demo import capture_case
from equipoise.diffraction.refine import refine

pytestmark = pytest.mark.slow


def test_default_refine_captures_a_10_degree_start_on_512_pixels() -> None:
    observed, start, truth = capture_case(512, 10.0, 0)
    result = refine(observed, start, "mosaic,misset", full_image=False)
    assert abs(result.parameters["mosaic_spread_deg"] - truth["mosaic_spread_deg"]) <= 0.1, result.parameters
    assert max(abs(a - b) for a, b in zip(result.parameters["misset_deg"], truth["misset_deg"])) <= 0.2
    assert result.converged, result.reasons
