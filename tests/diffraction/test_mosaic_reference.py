"""The mean orientation and equivalent spread of a finite mosaic-domain draw (mosaic_reference)."""

import math

import numpy as np
import torch

from equipoise.diffraction.crystal import crystal_vectors, mosaic_matrices, mosaic_samples, rotated_real_vectors
from equipoise.diffraction.flags import parse_nanobragg_args
from equipoise.diffraction.mosaic_reference import draw_reference
from equipoise.diffraction.refine import starting_config

F64 = dict(dtype=torch.float64, device=torch.device("cpu"))


def _truth(spread: float, seed: int = 1002, misset=(4.0, -7.0, 2.5), domains: int = 10):
    return parse_nanobragg_args(f"-cell 100 100 100 90 90 90 -default_F 100 -mosaic {spread} -mosaic_domains {domains} "
                                f"-mosaic_seed {seed} -misset {misset[0]} {misset[1]} {misset[2]}".split())


def _mean_axes(config) -> np.ndarray:
    """Unit mean a, b, c directions (3, 3) over the simulator's own rotated domain vectors."""
    real = crystal_vectors(config, None, torch.tensor(1.0, **F64), **F64).real
    axes, fracs = mosaic_samples(config)
    umats = mosaic_matrices(torch.tensor(config.crystal.mosaic_spread_deg, **F64), torch.as_tensor(axes, **F64),
                            torch.as_tensor(fracs, **F64))
    vectors = rotated_real_vectors(real, torch.tensor([0.0, 0.0, 1.0], **F64), [0.0], umats, reuse_phi0=False)
    mean = vectors.mean(dim=0)
    return (mean / mean.norm(dim=1, keepdim=True)).numpy()


def test_mean_orientation_is_that_of_the_simulated_domains() -> None:
    truth = _truth(1.5)
    ref = draw_reference(truth)
    at_reference = starting_config(truth, mosaic_spread_deg=0.0, misset_deg=tuple(ref["misset_deg"]))
    real = crystal_vectors(at_reference, None, torch.tensor(1.0, **F64), **F64).real.numpy()
    real = real / np.linalg.norm(real, axis=1, keepdims=True)
    angles = np.degrees(np.arccos(np.clip(np.sum(real * _mean_axes(truth), axis=1), -1.0, 1.0)))
    assert angles.max() < 0.01, angles  # the draw's mean, not the nominal misset ...
    nominal = crystal_vectors(starting_config(truth, mosaic_spread_deg=0.0), None, torch.tensor(1.0, **F64), **F64)
    nominal_real = nominal.real.numpy() / np.linalg.norm(nominal.real.numpy(), axis=1, keepdims=True)
    off = np.degrees(np.arccos(np.clip(np.sum(nominal_real * _mean_axes(truth), axis=1), -1.0, 1.0)))
    assert off.max() > 0.3, off  # ... which is 0.51 deg away for this 10-domain draw of 1.5 deg
    assert 0.45 < ref["mean_offset_deg"] < 0.6


def test_equivalent_spread_of_a_quadrature_truth_is_nominal_and_no_spread_is_nominal() -> None:
    quad = starting_config(_truth(1.2), mosaic_sampling="quadrature")
    ref = draw_reference(quad, model_domains=10)
    assert math.isclose(ref["mosaic_spread_deg"], 1.2, rel_tol=0.05), ref
    assert np.allclose(ref["misset_deg"], (4.0, -7.0, 2.5), atol=0.1), ref
    none = draw_reference(_truth(0.0))
    assert none == {"misset_deg": [4.0, -7.0, 2.5], "mosaic_spread_deg": 0.0, "mean_offset_deg": 0.0}
