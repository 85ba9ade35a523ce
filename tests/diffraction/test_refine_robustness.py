"""Robustness of the demo refinement to model mismatch and noise (slow: one refinement per case).

The observed image comes from other mosaic draws than the model's (another seed, 10 or 25
domains) or carries Poisson noise. The noisy cases use fluence 1e30: at the demo's 1e28 (about
1000 photons in all) the Cramér-Rao bound of the mosaic spread is about 0.2 deg, so no estimator
can meet the 0.1 deg criterion there (docs/refinement.md).
"""

from __future__ import annotations

import pytest

from equipoise.diffraction.demo import check_criteria, mismatch_case
from equipoise.diffraction.refine import refine

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("extra, noise_seed, fluence, quadrature", [
    (["-mosaic_seed", "777"], None, "1e28", False),
    (["-mosaic_seed", "777", "-mosaic_domains", "10"], None, "1e28", False),
    (["-mosaic_seed", "777", "-mosaic_domains", "25"], None, "1e28", True),
    ([], 1, "1e30", False),
    (["-mosaic_seed", "777", "-mosaic_domains", "25"], 1, "1e30", True),
])
def test_refinement_meets_demo_criteria_despite_mismatch(extra, noise_seed, fluence, quadrature):
    observed, model, floor = mismatch_case(extra, noise_seed, fluence, quadrature)
    result = refine(observed, model, ("mosaic", "misset"), strategy="orient")  # as measured in the benchmark
    criteria, errors = check_criteria(result, floor=floor)
    assert all(criteria.values()), (criteria, errors)
