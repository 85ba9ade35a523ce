"""Orientation search: the misset offset of lowest loss on a grid around the start.

Gradient refinement of the misset angles converges only from a few degrees away (a spot moves
by θ·|q| when the crystal turns by θ; once the predicted spots miss the observed ones the loss
has no slope toward them: docs/refinement.md, Capture range). The search evaluates the model
image — forward only, without autograd — at every misset offset of a cubic grid of spacing
``step_deg`` inside the ball of radius ``range_deg`` around the starting misset (the misset
angles are nanoBragg's rotations about x, y, z, PHYSICS.md §1.2; near the start they are
close to a rotation vector), and keeps the lowest. This is the crystallographer's coarse
orientation search ahead of post-refinement.

The search model may have broadened spots so that a coarse grid cannot step over the basin:
fewer unit cells ``n_cells`` (a reciprocal-lattice spot of width ~1/(N·a) grows as N falls,
PHYSICS.md §1.4) and/or a larger mosaic spread. Broadening changes the total intensity (∝ N³),
so each grid point's loss is taken at the best scale of the model image (profiled scale):
``s = Σ w·y / Σ w·m`` for the Poisson deviance (its exact minimiser without the ε floor) and
``s = Σ w·m·y / Σ w·m²`` for least squares.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.simulate import Simulator
from equipoise.errors import InputError

__all__ = ["SearchResult", "misset_grid", "search_misset", "parse_search"]


def parse_search(text: str) -> tuple[float, float]:
    """``"RANGE"`` or ``"RANGE,STEP"`` (deg) -> (range, step); step defaults to range/3.

    InputError (field ``--search-misset``) unless 0 < step <= range.
    """
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values.append(values[0] / 3.0)
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or not 0 < values[1] <= values[0]:
        raise InputError(f"expected RANGE_DEG[,STEP_DEG] with 0 < STEP <= RANGE, got {text!r}",
                         field="--search-misset")
    return values[0], values[1]


def misset_grid(range_deg: float, step_deg: float) -> np.ndarray:
    """Offsets (n, 3) deg: the cubic grid of spacing ``step_deg`` inside the ball of radius
    ``range_deg`` (the origin first, then by increasing distance)."""
    if not 0 < step_deg <= range_deg:
        raise InputError(f"need 0 < step <= range, got range {range_deg}, step {step_deg}", field="--search-misset")
    k = int(math.floor(range_deg / step_deg + 1e-9))
    axis = np.arange(-k, k + 1, dtype=np.float64) * step_deg
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    norms = np.linalg.norm(grid, axis=1)
    grid = grid[norms <= range_deg * (1 + 1e-9)]
    order = np.lexsort((grid[:, 2], grid[:, 1], grid[:, 0], np.linalg.norm(grid, axis=1)))
    return grid[order]


@dataclass
class SearchResult:
    """The two grid levels and the best point.

    ``offsets`` (n, 3) deg around ``start_misset_deg`` and ``losses`` (n,): the coarse level
    (profiled-scale data loss of the broadened search model, ``model``); ``candidates``: the
    ``top`` coarse points searched again on the fine grid (misset, loss); ``best_misset_deg``,
    ``best_loss``: the best point of the fine level (the refinement model, profiled scale), or of
    the coarse level when ``top`` is 0; ``start_loss``: the coarse loss at the start;
    ``evaluations``: forward passes of both levels; ``wall_s``: seconds.
    """

    range_deg: float
    step_deg: float
    start_misset_deg: list[float]
    offsets: np.ndarray
    losses: np.ndarray
    candidates: list[dict]
    fine_range_deg: float
    fine_step_deg: float
    best_misset_deg: list[float]
    best_offset_deg: list[float]
    best_loss: float
    start_loss: float
    model: dict
    evaluations: int
    wall_s: float

    def summary(self) -> dict:
        """JSON-ready: both grids (description), the candidates and the best point."""
        return {"range_deg": self.range_deg, "step_deg": self.step_deg, "points": int(len(self.offsets)),
                "model": self.model, "start_misset_deg": self.start_misset_deg, "start_loss": self.start_loss,
                "candidates": self.candidates, "fine_range_deg": self.fine_range_deg,
                "fine_step_deg": self.fine_step_deg, "best_misset_deg": self.best_misset_deg,
                "best_offset_deg": self.best_offset_deg, "best_loss": self.best_loss,
                "evaluations": self.evaluations, "wall_s": self.wall_s}


def _profiled_loss(loss: str, eps: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Loss of ``s·model`` against ``observed`` at the best scale s (module docstring)."""
    def poisson(model: Tensor, observed: Tensor, weight: Tensor) -> Tensor:
        total = (weight * model).sum()
        s = (weight * observed).sum() / total if float(total) > 0 else torch.ones_like(total)
        mu, y = s * model + eps, observed + eps
        return (weight * (mu - y + y * (torch.log(y) - torch.log(mu)))).sum()

    def lsq(model: Tensor, observed: Tensor, weight: Tensor) -> Tensor:
        mm = (weight * model * model).sum()
        s = (weight * model * observed).sum() / mm if float(mm) > 0 else torch.ones_like(mm)
        r = s * model - observed
        return 0.5 * (weight * r * r).sum()

    return poisson if loss == "poisson" else lsq


def _grid_losses(simulator: Simulator, params: dict[str, Tensor], missets: np.ndarray, observed: Tensor,
                 weight: Tensor, objective: Callable[[Tensor, Tensor, Tensor], Tensor]) -> np.ndarray:
    """Loss (n,) of the model image at each misset (n, 3) deg, forward only; non-finite -> inf."""
    dtype, dev = simulator.dtype, simulator.device
    points = torch.as_tensor(missets, dtype=dtype, device=dev)
    losses = torch.empty(len(missets), dtype=dtype, device=dev)
    with torch.no_grad():
        for i in range(len(missets)):
            losses[i] = objective(simulator({**params, "misset_deg": points[i]}), observed, weight)
    values = losses.cpu().numpy()
    return np.where(np.isfinite(values), values, np.inf)


def search_misset(observed: Tensor, weight: Tensor, config: SimulationConfig, range_deg: float, step_deg: float, *,
                  loss: str = "poisson", eps: float = 0.0, n_cells: float | None = None,
                  mosaic_spread_deg: float | None = None, top: int = 3, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> SearchResult:
    """Coarse-to-fine orientation search around ``config``'s misset.

    Coarse level: the profiled-scale data loss of the broadened search model (``n_cells`` cells
    per axis, None: the config's; ``mosaic_spread_deg``, None: the config's, > 0 needs mosaic
    domains) at every offset of :func:`misset_grid` (``range_deg``, ``step_deg``). Fine level
    (``top`` > 0): the ``top`` best coarse points, each searched again with the config's own model
    on the grid of radius ``step_deg`` and spacing ``step_deg / 2`` around it; the best fine point
    wins (the broadened model finds the basin, the sharp one picks the right neighbour).
    ``observed``, ``weight``: (spixels, fpixels) photons/pixel and pixel weights (0 = ignored);
    ``eps``: the Poisson floor (photons/pixel) of refine's data term.
    """
    if config.crystal.misset_random:
        raise InputError("-misset random cannot be searched; give -misset rx ry rz as the start", field="-misset")
    if not isinstance(top, int) or top < 0:
        raise InputError(f"top must be an integer >= 0, got {top!r}", field="search_top")
    start = np.asarray(config.crystal.misset_deg or (0.0, 0.0, 0.0), dtype=np.float64)
    offsets = misset_grid(range_deg, step_deg)
    started = time.perf_counter()
    simulator = Simulator(config, dtype=dtype, device=device)
    dev = simulator.device
    broad: dict[str, Tensor] = {}
    if n_cells is not None:
        if not n_cells >= 1:
            raise InputError(f"search cells per axis must be >= 1, got {n_cells}", field="search_n_cells")
        broad["n_cells"] = torch.full((3,), float(n_cells), dtype=dtype, device=dev)
    if mosaic_spread_deg is not None:
        broad["mosaic_spread_deg"] = torch.tensor(float(mosaic_spread_deg), dtype=dtype, device=dev)
    objective = _profiled_loss(loss, eps)
    obs = observed.to(dtype=dtype, device=dev)
    w = weight.to(dtype=dtype, device=dev)
    losses = _grid_losses(simulator, broad, start + offsets, obs, w, objective)
    evaluations = len(offsets)
    order = np.argsort(losses, kind="stable")[:top]
    candidates = [{"misset_deg": (start + offsets[k]).tolist(), "loss": float(losses[k])} for k in order]
    best_offset, best_loss = offsets[int(np.argmin(losses))], float(np.min(losses))
    fine_range, fine_step = (float(step_deg), float(step_deg) / 2.0) if top else (0.0, 0.0)
    if top:
        fine = misset_grid(fine_range, fine_step)
        best_loss = math.inf
        for k in order:
            around = offsets[k] + fine
            values = _grid_losses(simulator, {}, start + around, obs, w, objective)
            evaluations += len(fine)
            j = int(np.argmin(values))
            if values[j] < best_loss:
                best_offset, best_loss = around[j], float(values[j])
    model = {"n_cells": float(n_cells) if n_cells is not None else [float(n) for n in simulator.n_cells],
             "mosaic_spread_deg": float(mosaic_spread_deg if mosaic_spread_deg is not None
                                        else config.crystal.mosaic_spread_deg)}
    return SearchResult(range_deg=float(range_deg), step_deg=float(step_deg), start_misset_deg=start.tolist(),
                        offsets=offsets, losses=losses, candidates=candidates, fine_range_deg=fine_range,
                        fine_step_deg=fine_step, best_misset_deg=(start + best_offset).tolist(),
                        best_offset_deg=best_offset.tolist(), best_loss=best_loss, start_loss=float(losses[0]),
                        model=model, evaluations=evaluations, wall_s=time.perf_counter() - started)
