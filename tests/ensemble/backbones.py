"""Test backbones: ideal-geometry chains built by NeRF from (phi, psi, omega), and the 2K39 path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from equipoise.ensemble.baselines import build_backbone
from equipoise.ensemble.geometry import ideal_geometry
from equipoise.ensemble.io import Ensemble

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
ENSEMBLE_2K39 = SHARED / "data" / "ensembles" / "2k39_ubiquitin_116models.pdb.gz"


def need_2k39() -> Path:
    """The 2K39 file in ../shared, or skip the test."""
    if not ENSEMBLE_2K39.is_file():
        pytest.skip(f"{ENSEMBLE_2K39} not found (../shared beside the checkout)")
    return ENSEMBLE_2K39


def ideal_ensemble(n_models: int = 4, n_res: int = 10, spread_deg: float = 4.0, seed: int = 0,
                   sequence: str | None = None) -> Ensemble:
    """Helices (phi -63, psi -43, omega 180 deg plus Gaussian noise of ``spread_deg``) with Engh &
    Huber bonds and angles: ideal geometry, no clashes, no breaks."""
    g = torch.Generator().manual_seed(seed)
    sequence = sequence or ("MQIFVKTLTGKTITLEVEPS" * 4)[:n_res]

    def noisy(value: float) -> torch.Tensor:
        return torch.deg2rad(value + spread_deg * torch.randn(n_models, n_res - 1, generator=g, dtype=torch.float64))

    ideal = ideal_geometry(sequence, n_res)
    omega = torch.deg2rad(180.0 + 2.0 * torch.randn(n_models, n_res - 1, generator=g, dtype=torch.float64))
    backbone = build_backbone(noisy(-63.0), noisy(-43.0), omega, ideal["bond"], ideal["angle"])
    return Ensemble.from_backbone(backbone, sequence)
