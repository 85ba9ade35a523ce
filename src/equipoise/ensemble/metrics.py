"""Ensemble metrics: Kabsch superposition and RMSD, RMSF, radius of gyration, distance and
principal-component distributions, precision and recall; :class:`EnsembleComparison` runs them.

All RMSDs are true RMSDs: ``sqrt(mean over atoms of |x - y|^2)`` (the squared norm summed over x,
y, z, not averaged over coordinates, which gives RMSD/sqrt(3)). Coordinates are Å.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from equipoise.errors import InputError

__all__ = ["superpose", "kabsch_rmsd", "pairwise_rmsd", "rmsd_to", "iterative_superposition", "rmsf",
           "radius_of_gyration", "ca_distance_samples", "jensen_shannon", "wasserstein_1d",
           "principal_components", "precision_recall", "EnsembleComparison"]


def _kabsch(mobile: Tensor, target: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rotation ``(..., 3, 3)`` and centres ``(..., 3)`` of the weighted least-squares fit of
    ``mobile`` onto ``target`` (both ``(..., N, 3)``; weights ``(..., N)``), Kabsch (1976) Acta
    Cryst. A32, 922, with the determinant sign correction against reflections."""
    w = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    mc = (mobile * w[..., None]).sum(-2)
    tc = (target * w[..., None]).sum(-2)
    h = ((mobile - mc[..., None, :]) * w[..., None]).transpose(-1, -2) @ (target - tc[..., None, :])
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    diag = torch.ones(*d.shape, 3, dtype=mobile.dtype, device=mobile.device)
    diag[..., 2] = torch.where(d == 0, torch.ones_like(d), d)
    rotation = vt.transpose(-1, -2) @ torch.diag_embed(diag) @ u.transpose(-1, -2)
    return rotation, mc, tc


def superpose(mobile: Tensor, target: Tensor, atoms: Tensor | None = None) -> Tensor:
    """``mobile`` ``(..., N, 3)`` rotated and translated onto ``target`` (same shape) by the Kabsch
    fit over the atoms where ``atoms`` ``(..., N)`` is True (default all); all atoms are moved."""
    weights = torch.ones(mobile.shape[:-1], dtype=mobile.dtype, device=mobile.device) if atoms is None \
        else atoms.to(dtype=mobile.dtype, device=mobile.device).expand(mobile.shape[:-1])
    rotation, mc, tc = _kabsch(mobile, target, weights)
    return (mobile - mc[..., None, :]) @ rotation.transpose(-1, -2) + tc[..., None, :]


def kabsch_rmsd(a: Tensor, b: Tensor, atoms: Tensor | None = None) -> Tensor:
    """True RMSD (Å) ``(...)`` between ``a`` and ``b`` ``(..., N, 3)`` after optimal superposition."""
    moved = superpose(a, b, atoms)
    sq = (moved - b).square().sum(-1)
    if atoms is None:
        return sq.mean(-1).sqrt()
    w = atoms.to(sq.dtype).expand(sq.shape)
    return ((sq * w).sum(-1) / w.sum(-1).clamp_min(1)).sqrt()


def rmsd_to(coords: Tensor, reference: Tensor, atoms: Tensor | None = None, chunk: int = 4096) -> Tensor:
    """RMSD (Å) of every model of ``coords`` ``(M, N, 3)`` to every model of ``reference`` ``(R, N, 3)``
    after superposition: ``(M, R)``."""
    m, r = coords.shape[0], reference.shape[0]
    ii, jj = torch.meshgrid(torch.arange(m), torch.arange(r), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    out = torch.empty(m * r, dtype=coords.dtype, device=coords.device)
    for start in range(0, m * r, chunk):
        sl = slice(start, start + chunk)
        out[sl] = kabsch_rmsd(coords[ii[sl]], reference[jj[sl]], atoms)
    return out.reshape(m, r)


def pairwise_rmsd(coords: Tensor, atoms: Tensor | None = None) -> Tensor:
    """RMSDs (Å) of all pairs i < j of models ``(M, N, 3)``: ``(M (M-1) / 2,)``."""
    full = rmsd_to(coords, coords, atoms)
    iu = torch.triu_indices(coords.shape[0], coords.shape[0], 1)
    return full[iu[0], iu[1]]


def iterative_superposition(coords: Tensor, atoms: Tensor | None = None, iterations: int = 10,
                            tol: float = 1e-6) -> Tensor:
    """Models ``(M, N, 3)`` superposed onto their own mean, repeated until the mean moves less than
    ``tol`` Å RMS (start: the first model). Returns the superposed models."""
    mean = coords[0]
    moved = coords
    for _ in range(iterations):
        moved = superpose(coords, mean.expand_as(coords), atoms)
        new_mean = moved.mean(0)
        shift = (new_mean - mean).square().sum(-1).mean().sqrt()
        mean = new_mean
        if shift < tol:
            break
    return moved


def rmsf(coords: Tensor, atoms: Tensor | None = None) -> Tensor:
    """Root-mean-square fluctuation (Å) per atom ``(N,)`` about the mean after iterative superposition."""
    moved = iterative_superposition(coords, atoms)
    return (moved - moved.mean(0)).square().sum(-1).mean(0).sqrt()


def radius_of_gyration(coords: Tensor) -> Tensor:
    """Radius of gyration (Å) ``(...)`` of ``(..., N, 3)`` (unit masses)."""
    centred = coords - coords.mean(-2, keepdim=True)
    return centred.square().sum(-1).mean(-1).sqrt()


def ca_distance_samples(ca: Tensor, min_separation: int = 3) -> Tensor:
    """CA-CA distances (Å) ``(M, P)`` of residue pairs with ``j - i >= min_separation`` per model."""
    n = ca.shape[-2]
    iu = torch.triu_indices(n, n, min_separation)
    d = (ca[..., iu[0], :] - ca[..., iu[1], :]).norm(dim=-1)
    return d


def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """Wasserstein-1 distance between two 1-D samples (same unit as the samples), exact, from the
    integral of |F_a - F_b| over the merged support (as scipy.stats.wasserstein_distance)."""
    a, b = torch.sort(a.reshape(-1)).values, torch.sort(b.reshape(-1)).values
    allv = torch.sort(torch.cat([a, b])).values
    deltas = allv[1:] - allv[:-1]
    fa = torch.searchsorted(a, allv[:-1], right=True).to(a.dtype) / a.numel()
    fb = torch.searchsorted(b, allv[:-1], right=True).to(a.dtype) / b.numel()
    return ((fa - fb).abs() * deltas).sum()


def jensen_shannon(a: Tensor, b: Tensor, bins: int = 50, low: float | None = None,
                   high: float | None = None) -> Tensor:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) between histograms of two 1-D samples over a
    common range (default: the two samples' joint range)."""
    a, b = a.reshape(-1), b.reshape(-1)
    low = float(torch.minimum(a.min(), b.min())) if low is None else low
    high = float(torch.maximum(a.max(), b.max())) if high is None else high
    high = high if high > low else low + 1.0
    p = torch.histc(a, bins, low, high)
    q = torch.histc(b, bins, low, high)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(x: Tensor) -> Tensor:
        nz = x > 0
        return (x[nz] * (x[nz] / m[nz]).log()).sum()

    return 0.5 * kl(p) + 0.5 * kl(q)


def principal_components(superposed: Tensor, k: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Mean ``(D,)``, the first ``k`` principal axes ``(k, D)`` and their variances ``(k,)`` (Å^2) of
    superposed models ``(M, N, 3)`` flattened to D = 3N."""
    x = superposed.reshape(superposed.shape[0], -1)
    mean = x.mean(0)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k], s[:k].square() / max(x.shape[0] - 1, 1)


def precision_recall(samples: Tensor, reference: Tensor, threshold: float = 2.0,
                     atoms: Tensor | None = None) -> tuple[float, float, Tensor]:
    """Precision (fraction of samples within ``threshold`` Å RMSD of some reference model), recall
    (fraction of reference models within ``threshold`` of some sample), and the RMSD matrix
    ``(n_samples, n_reference)``."""
    d = rmsd_to(samples, reference, atoms)
    return float((d.min(1).values <= threshold).double().mean()), float((d.min(0).values <= threshold).double().mean()), d


@dataclass
class EnsembleComparison:
    """Compare a sample ensemble with a reference ensemble, MDAnalysis-analysis style.

    ``EnsembleComparison(samples, reference, atoms="CA").run()`` returns itself with ``results``
    (a dict of floats and tensors) filled in. samples ``(M, n_res, 4, 3)`` and reference
    ``(R, n_res, 4, 3)`` Å, same residues; ``atoms`` is ``"CA"`` (default) or ``"backbone"``
    (N, CA, C, O) for superposition, RMSD and RMSF. Results: ``mean_pairwise_rmsd`` of samples and
    reference (Å) and their ratio, ``rmsf`` per residue (Å) of each and their Pearson r,
    ``rg`` means, ``ca_distance_js`` (nats) and ``ca_distance_w1`` (Å, mean over residue pairs),
    ``pc_w1`` (Å, W1 of the projections on the reference's PC1 and PC2, as RMS displacement per atom), ``precision``, ``recall``
    (RMSD threshold ``threshold`` Å).
    """

    samples: Tensor
    reference: Tensor
    atoms: str = "CA"
    threshold: float = 2.0
    results: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.atoms not in ("CA", "backbone"):
            raise InputError(f"atoms must be 'CA' or 'backbone', got {self.atoms!r}", field="atoms")
        for name, x in (("samples", self.samples), ("reference", self.reference)):
            if x.ndim != 4 or x.shape[2:] != (4, 3) or x.shape[0] < 2:
                raise InputError(f"{name} must be (n_models >= 2, n_res, 4, 3), got {tuple(x.shape)}", field=name)
        if self.samples.shape[1] != self.reference.shape[1]:
            raise InputError(f"samples have {self.samples.shape[1]} residues, the reference "
                             f"{self.reference.shape[1]}", field="samples")
        if not self.threshold > 0:
            raise InputError(f"threshold must be > 0 Å, got {self.threshold}", field="threshold")

    def _atoms(self, x: Tensor) -> Tensor:
        return x[:, :, 1] if self.atoms == "CA" else x.reshape(x.shape[0], -1, 3)

    def run(self) -> "EnsembleComparison":
        """Compute every metric (no gradients); returns self."""
        with torch.no_grad():
            s = self._atoms(self.samples.to(torch.float64))
            r = self._atoms(self.reference.to(torch.float64))
            res = self.results
            res["mean_pairwise_rmsd_samples"] = float(pairwise_rmsd(s).mean())
            res["mean_pairwise_rmsd_reference"] = float(pairwise_rmsd(r).mean())
            res["pairwise_rmsd_ratio"] = res["mean_pairwise_rmsd_samples"] / max(res["mean_pairwise_rmsd_reference"], 1e-12)
            per_atom_s, per_atom_r = rmsf(s), rmsf(r)
            k = 1 if self.atoms == "CA" else 4
            res["rmsf_samples"] = per_atom_s.reshape(-1, k).square().mean(-1).sqrt()
            res["rmsf_reference"] = per_atom_r.reshape(-1, k).square().mean(-1).sqrt()
            res["rmsf_pearson"] = float(torch.corrcoef(torch.stack([res["rmsf_samples"], res["rmsf_reference"]]))[0, 1])
            res["rg_samples"] = float(radius_of_gyration(s).mean())
            res["rg_reference"] = float(radius_of_gyration(r).mean())
            ds = ca_distance_samples(self.samples[:, :, 1].to(torch.float64))
            dr = ca_distance_samples(self.reference[:, :, 1].to(torch.float64))
            res["ca_distance_w1"] = float(torch.stack([wasserstein_1d(ds[:, p], dr[:, p]) for p in range(ds.shape[1])]).mean())
            res["ca_distance_js"] = float(jensen_shannon(ds, dr))
            ref_sup = iterative_superposition(r)
            mean, axes, variances = principal_components(ref_sup)
            sample_sup = superpose(s, mean.reshape(-1, 3).expand_as(s))
            # projections divided by sqrt(n_atoms): RMS displacement along the axis, in Å
            scale = math.sqrt(r.shape[1])
            proj_r = (ref_sup.reshape(r.shape[0], -1) - mean) @ axes.T / scale
            proj_s = (sample_sup.reshape(s.shape[0], -1) - mean) @ axes.T / scale
            res["pc_variance_reference"] = variances
            res["projections_reference"], res["projections_samples"] = proj_r, proj_s
            res["pc_w1"] = [float(wasserstein_1d(proj_s[:, i], proj_r[:, i])) for i in range(axes.shape[0])]
            precision, recall, matrix = precision_recall(s, r, self.threshold)
            res["precision"], res["recall"] = precision, recall
            res["pairwise_rmsd_hist_samples"] = pairwise_rmsd(s)
            res["pairwise_rmsd_hist_reference"] = pairwise_rmsd(r)
            res["min_rmsd_to_reference"] = matrix.min(1).values
        return self

    def scalars(self) -> dict[str, float | list[float]]:
        """The JSON-ready numbers of ``results`` (tensors of per-item values left out, except RMSF)."""
        out: dict[str, float | list[float]] = {}
        for key, value in self.results.items():
            if isinstance(value, Tensor):
                if key.startswith("rmsf_"):
                    out[key] = [round(float(v), 4) for v in value]
            elif isinstance(value, float) and not math.isfinite(value):
                out[key] = None  # type: ignore[assignment]
            else:
                out[key] = value
        return out
