"""Twin model for refinement: twinned model amplitudes, twin fractions, twin-consistent free flags.

A (pseudo-)merohedral twin with operators T_0 = identity, T_1 .. T_K and fractions alpha_k
(sum 1, alpha_0 = 1 - sum of the others) measures

    |F_twin(h)|^2 = sum_k alpha_k |F_model(T_k h)|^2

(Yeates 1997, Methods Enzymol. 276, 344; the twinned intensity that SHELXL, REFMAC5 and
servalcat refine against; REFMAC5's twin refinement: Murshudov et al. 2011, Acta Cryst. D67,
355). F_model includes the scales and the
bulk solvent. The mates T_k h are looked up among the measured reflections (``HklLookup``:
symmetry and Friedel mates, so indices need not be in the same asymmetric unit). A reflection
with an unmeasured mate has no twinned model amplitude: it is left out of the twin target and
of the fraction fit (counted in ``TwinOperators.n_missing``); its own |F_model| stands in for
the missing mate only in R-factors and maps, which then cover the same reflections as without
a twin model.

The twin target here is least squares on amplitudes (``twin_least_squares``), not the twin
likelihood of REFMAC5 / servalcat, which integrates over the unknown untwinned intensities.

Free flags: a free reflection's twin mates hold alpha |F(h)|^2 of its intensity. If those mates
stay in the working set, the model is fitted to the free reflection's intensity through them
and R-free is biased low. ``twin_consistent_work`` removes the mates of free reflections from
the working set (they are in neither set; the free set is unchanged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import gemmi
import numpy as np
import torch
from torch import Tensor

from equipoise.xtal.scaling import bin_scale
from equipoise.xtal.twinning import HklLookup

#: grid step of the twin-fraction search
ALPHA_STEP = 0.005
#: largest twin fraction of one law (beyond 1/2 the law and the identity swap roles)
ALPHA_MAX = 0.5


@dataclass
class TwinOperators:
    """Twin laws on a reflection list and where each reflection's mates are.

    laws: the K laws (``"-h,k,-l"``); rotations: K (3, 3) int matrices R (h' = h R);
    mates: (K + 1, m) int64 rows of T_k h (row 0: the reflection itself; an unmeasured mate
    points at the reflection itself); missing: (m,) bool, some mate not measured.
    """

    laws: list[str]
    rotations: list[np.ndarray]
    mates: Tensor
    missing: Tensor

    @classmethod
    def build(cls, hkl: Tensor | np.ndarray, spacegroup: gemmi.SpaceGroup, laws: list[str],
              rotations: list) -> "TwinOperators":
        """Mates of every reflection of ``hkl`` (m, 3) under each law (``rotations``: (3, 3) each)."""
        device = hkl.device if isinstance(hkl, Tensor) else torch.device("cpu")
        h = np.asarray(hkl.cpu().numpy() if isinstance(hkl, Tensor) else hkl, dtype=np.int64)
        lookup = HklLookup(h, spacegroup)
        own = np.arange(h.shape[0])
        rows, missing = [own], np.zeros(h.shape[0], dtype=bool)
        rots = [np.asarray(r, dtype=np.int64) for r in rotations]
        for rot in rots:
            mate = lookup.find(h @ rot)
            missing |= mate < 0
            rows.append(np.where(mate < 0, own, mate))
        return cls(list(laws), rots, torch.as_tensor(np.stack(rows), device=device),
                   torch.as_tensor(missing, device=device))

    @property
    def n_laws(self) -> int:
        """K, the number of twin laws (operators besides the identity)."""
        return len(self.laws)

    @property
    def n_missing(self) -> int:
        """Reflections with an unmeasured twin mate."""
        return int(self.missing.sum())

    def amplitudes(self, f_abs: Tensor, alphas: Tensor) -> Tensor:
        """Twinned amplitudes sqrt(sum_k alpha_k f_abs[T_k h]^2): f_abs (m,) or (m, g)
        |F_model| (any unit; differentiable), alphas (K,) twin fractions (alpha_0 = 1 - sum);
        returns the shape of f_abs. Rows with a missing mate use their own amplitude for it."""
        weights = torch.cat([1.0 - alphas.sum().reshape(1), alphas]).to(f_abs.dtype)
        i_twin = sum(w * f_abs[rows] ** 2 for w, rows in zip(weights, self.mates))
        return torch.sqrt(i_twin.clamp_min(1e-30))

    def mates_of(self, mask: Tensor) -> Tensor:
        """(m,) bool: reflections that are a twin mate (under any law) of a reflection in
        ``mask`` (m,) bool, the masked reflections themselves excluded."""
        out = torch.zeros_like(mask)
        for rows in self.mates[1:]:
            hit = rows[mask]
            out[hit] = True
        return out & ~mask


@dataclass
class TwinFractionFit:
    """One twin-fraction fit: laws, fractions before and after, LS losses, why.

    alphas, start: (K,) fractions after and before the fit; loss, loss_start, loss_untwinned:
    sum over the fitted reflections of (F_o - k_bin F_twin)^2 / sum F_o^2 at the fitted, the
    starting and zero fractions (bin scales refitted at each); n_used: reflections fitted.
    """

    laws: list[str]
    alphas: list[float]
    start: list[float]
    loss: float
    loss_start: float
    loss_untwinned: float
    n_used: int
    reason: str = ""

    def as_dict(self) -> dict:
        """JSON-ready content (``"twin"`` entry of a cycle in summary.json)."""
        return asdict(self)

    def line(self) -> str:
        """One line for the log."""
        fr = ", ".join(f"{law} {a:.3f}" for law, a in zip(self.laws, self.alphas))
        return f"twin fraction {fr} ({self.reason})"


def scaled_twin_loss(f_obs: Tensor, f_twin: Tensor, use: Tensor, bin_index: Tensor,
                     n_bins: int) -> Tensor:
    """Sum over ``use`` of (F_o - k_bin F_twin)^2 / sum F_o^2 with k_bin the closed-form LS
    scale of each bin; f_obs, use, bin_index (m,); f_twin (m,) or (m, g) -> () or (g,)."""
    k = bin_scale(f_obs, f_twin, bin_index, n_bins, use)[bin_index]
    fo = f_obs.reshape(-1, *([1] * (f_twin.dim() - 1)))
    w = use.to(f_obs.dtype).reshape(fo.shape)
    return ((fo - k * f_twin) ** 2 * w).sum(0) / (f_obs[use] ** 2).sum().clamp_min(1e-30)


def fit_fractions(f_obs: Tensor, f_abs: Tensor, ops: TwinOperators, use: Tensor, bin_index: Tensor,
                  n_bins: int, start: Tensor, *, step: float = ALPHA_STEP, rounds: int = 2) -> TwinFractionFit:
    """Least-squares twin fractions: minimise ``scaled_twin_loss`` over alpha on a grid of
    ``step`` in [0, ALPHA_MAX] per law (one law: the whole grid at once; several: coordinate
    descent, ``rounds`` sweeps, keeping alpha_0 >= 0), bin scales refitted at every
    trial. f_obs, f_abs (m,) observed and model amplitudes (|F_model|, current scales, no
    gradient); use (m,) bool: reflections fitted (working, all mates measured); start (K,).
    """
    f_abs = f_abs.detach()
    grid = torch.arange(0.0, ALPHA_MAX + step / 2, step, dtype=f_obs.dtype, device=f_obs.device)
    alphas = start.detach().to(f_obs.dtype).clone()

    def loss_of(trials: Tensor) -> Tensor:  # trials (g, K) -> (g,)
        f = torch.stack([ops.amplitudes(f_abs, a) for a in trials], 1)
        return scaled_twin_loss(f_obs, f, use, bin_index, n_bins)

    for _ in range(rounds if ops.n_laws > 1 else 1):
        for k in range(ops.n_laws):
            trials = alphas.repeat(grid.shape[0], 1)
            trials[:, k] = grid
            ok = 1.0 - (alphas.sum() - alphas[k]) - grid >= 0.0  # alpha_0 stays >= 0
            losses = loss_of(trials[ok])
            alphas[k] = grid[ok][int(torch.argmin(losses))]
    zero = torch.zeros_like(alphas)
    loss, loss_start, loss0 = (float(loss_of(a[None])[0]) for a in (alphas, start.to(f_obs.dtype), zero))
    n = int(use.sum())
    reason = (f"grid {step:g} in [0, {ALPHA_MAX:g}], LS on {n} working reflections with bin scales refitted: "
              f"loss {loss:.5f} (start {loss_start:.5f} at {', '.join(f'{a:.3f}' for a in start.tolist())}; "
              f"untwinned {loss0:.5f})")
    return TwinFractionFit(ops.laws, [float(a) for a in alphas], [float(a) for a in start], loss,
                           loss_start, loss0, n, reason)


def twin_consistent_work(work: Tensor, free: Tensor, ops: TwinOperators) -> tuple[Tensor, int]:
    """((m,) bool working set without the twin mates of free reflections, how many were moved
    out of it). See the module docstring."""
    moved = work & ops.mates_of(free)
    return work & ~moved, int(moved.sum())


def twin_least_squares(f_obs: Tensor, f_twin: Tensor, weight: Tensor, mask: Tensor) -> Tensor:
    """Scalar mean over ``mask`` of weight (F_o - F_twin)^2 / 2: f_obs, f_twin (scaled twinned
    model amplitudes), weight (1 / F^2 units), mask, all (m,). With weight 1/<(F_o - F_twin)^2>
    per resolution bin this is a Gaussian -log-likelihood per reflection (~0.5), the units of
    the ML target it replaces for twinned data."""
    w = mask.to(f_obs.dtype) * weight
    return 0.5 * (w * (f_obs - f_twin) ** 2).sum() / mask.sum().clamp_min(1)


def residual_weights(f_obs: Tensor, f_twin: Tensor, mask: Tensor, bin_index: Tensor, n_bins: int) -> Tensor:
    """(m,) per-bin weights 1 / <(F_o - F_twin)^2> over ``mask`` (no gradient); a bin without
    reflections in ``mask`` gets the overall mean."""
    r2 = ((f_obs - f_twin.detach()) ** 2) * mask.to(f_obs.dtype)
    num = torch.zeros(n_bins, dtype=f_obs.dtype, device=f_obs.device).index_add_(0, bin_index, r2)
    cnt = torch.zeros_like(num).index_add_(0, bin_index, mask.to(f_obs.dtype))
    overall = num.sum() / cnt.sum().clamp_min(1)
    var = torch.where(cnt > 0, num / cnt.clamp_min(1), overall).clamp_min(1e-12 * float(overall) + 1e-30)
    return (1.0 / var)[bin_index]
