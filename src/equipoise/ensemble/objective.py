"""The VAE's objective as core terms, and the posterior-collapse diagnostic.

Every term is a function of the forward pass (:class:`~equipoise.ensemble.model.VAEOutput`) and
returns a scalar; the geometry terms are the plain torch functions of
:mod:`equipoise.ensemble.geometry` (the same functions are the validation metrics):

| term | value |
|---|---|
| reconstruction | mean squared atom deviation (Å^2) after superposing the target on the prediction |
| pairs | Huber (1 Å) of CA-CA distance errors, pairs with target distance < ``pair_cutoff`` |
| bonds | mean (d - d0)^2 / sigma^2 over backbone bonds (Engh & Huber 1991 targets and sigmas) |
| angles | mean angular Huber of bond angles in radians, wrapped, divided by sigma^2 |
| omega | mean angular Huber of omega against 180 deg (trans peptides), / sigma^2 |
| ramachandran | the Ramachandran score of (phi, psi) (periodic, smooth) |
| clashes | backbone clash penalty (|i-j| >= 2 overlaps below the sum of radii - 0.4 Å) |
| kl | free bits (Kingma et al. 2016) of the global and residue latents, nats |

Balancing: :class:`~equipoise.core.GradNormRatioBalancer` with reconstruction as the reference:
each term's weight makes its gradient norm on the model a set ratio (``ObjectiveConfig.ratios``)
of the reconstruction's, recomputed every ``rebalance_every`` steps; every term's share and
gradient norm is in the record. (Target shares of the values were tried first: the geometry
terms' gradients are 100x the reconstruction's per unit of value, so equal value shares left the
reconstruction without gradient, and a near-zero clash value got a weight of 4e7.) Clashes are
off in training by default (ratio 0): a near-zero clash value gets a meaningless balanced weight
(above). Prior samples do clash before refinement (2K39 after 20 minutes: ~12 clashing pairs
per conformer, 43% of them with one of the flexible C-terminal residues 71-76), and the sampling
refinement removes them (docs/ensemble.md). The KL weight follows a cyclical schedule that ramps
over the first ``kl_ratio`` of each cycle and then *holds* (Fu et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from equipoise.core import Flag, GradNormRatioBalancer, Term, robust, schedules
from equipoise.ensemble import geometry
from equipoise.ensemble.metrics import superpose
from equipoise.ensemble.model import VAEOutput

__all__ = ["ObjectiveConfig", "make_terms", "make_balancer", "kl_per_dimension", "collapse_diagnostic", "collapse_flags",
           "reconstruction_msd", "pair_distance_loss", "geometry_terms"]

REFERENCE = "reconstruction"
DEFAULT_RATIOS = {"pairs": 0.5, "bonds": 0.2, "angles": 0.2, "omega": 0.1, "ramachandran": 0.1, "clashes": 0.0,
                  "kl": 0.3}


@dataclass
class ObjectiveConfig:
    """Objective settings. ``ratios``: each term's gradient norm as a ratio of the reconstruction's
    (0: term off); ``free_bits``: KL floor per latent dimension (nats); ``kl_period``/``kl_ratio``:
    cyclical KL schedule (steps, ramp fraction); ``pair_cutoff``: Å; ``rebalance_every``: steps
    between rebalancing."""

    ratios: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATIOS))
    free_bits: float = 0.1
    kl_period: int = 500
    kl_ratio: float = 0.5
    pair_cutoff: float = 15.0
    rebalance_every: int = 100

    def to_dict(self) -> dict:
        """Plain dict (for config.json)."""
        return asdict(self)


def reconstruction_msd(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared deviation (Å^2) of all backbone atoms after superposing ``target`` on ``pred``
    (both (B, n, 4, 3); ``mask`` (B, n)). The superposition is not differentiated: the decoder is
    equivariant, so the gradient of the aligned error is the gradient of the error."""
    atoms = mask.unsqueeze(-1).expand(-1, -1, 4).reshape(mask.shape[0], -1)
    p = pred.reshape(pred.shape[0], -1, 3)
    with torch.no_grad():
        aligned = superpose(target.reshape(target.shape[0], -1, 3), p, atoms)
    sq = (p - aligned).square().sum(-1)
    return (sq * atoms).sum() / atoms.sum().clamp_min(1)


def pair_distance_loss(pred: Tensor, target: Tensor, mask: Tensor, cutoff: float) -> Tensor:
    """Huber (delta 1 Å) of CA-CA distance errors over pairs i < j with target distance < ``cutoff``
    Å; mean over pairs. Shapes as :func:`reconstruction_msd`."""
    dp = torch.cdist(pred[:, :, 1], pred[:, :, 1])
    dt = torch.cdist(target[:, :, 1], target[:, :, 1])
    n = mask.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=mask.device), diagonal=1)
    pairs = upper & mask.unsqueeze(1) & mask.unsqueeze(2) & (dt < cutoff)
    return (robust.huber(dp - dt, 1.0) * pairs).sum() / pairs.sum().clamp_min(1)


def kl_per_dimension(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per latent dimension (nats), same shape as ``mu``."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def _kl(out: VAEOutput, floor: float) -> Tensor:
    total = schedules.free_bits(kl_per_dimension(out.mu, out.logvar), floor)
    if out.mu_res is not None:
        residue = kl_per_dimension(out.mu_res, out.logvar_res) * out.mask.unsqueeze(-1)
        total = total + schedules.free_bits(residue.reshape(residue.shape[0], -1), floor)
    return total


def geometry_terms(backbone: Tensor, mask: Tensor, sequence: str | None = None, clash_pairs: Tensor | None = None,
                   clash_buffer: float = 0.0) -> dict[str, Tensor]:
    """The geometry losses of backbones (B, n, 4, 3) with residue mask (B, n) and one-letter
    ``sequence`` (Gly/Pro targets; None: general): bonds, angles, omega, ramachandran, clashes
    (scalars; see the module table). ``clash_pairs``/``clash_buffer``: see
    :func:`~equipoise.ensemble.geometry.clash_loss`. Shared by training and by the post-hoc
    refinement of sampled conformers."""
    return {"bonds": geometry.bond_loss(backbone, mask, sequence),
            "angles": geometry.angle_loss(backbone, mask, sequence),
            "omega": geometry.omega_loss(backbone, mask), "ramachandran": geometry.ramachandran_loss(backbone, mask),
            "clashes": geometry.clash_loss(backbone, mask, clash_pairs, clash_buffer)}


def make_terms(config: ObjectiveConfig, sequence: str | Sequence[str] | None = None) -> list[Term]:
    """The objective's terms, each reading the forward pass's :class:`VAEOutput`; ``sequence``
    (one-letter; for a model of several proteins one per protein, indexed by ``VAEOutput.protein``)
    gives the residue-specific geometry targets."""
    cache: dict[int, dict[str, Tensor]] = {}
    sequences = [sequence] if sequence is None or isinstance(sequence, str) else list(sequence)

    def geom(name: str) -> Callable[[VAEOutput], Tensor]:
        def fn(out: VAEOutput) -> Tensor:
            key = id(out.pred)
            if key not in cache:
                cache.clear()
                cache[key] = geometry_terms(out.pred, out.mask, sequences[out.protein])
            return cache[key][name]
        return fn

    kl_schedule = schedules.Cyclical(period=config.kl_period, ratio=config.kl_ratio)
    terms = [Term("reconstruction", lambda out: reconstruction_msd(out.pred, out.target, out.mask)),
             Term("pairs", lambda out: pair_distance_loss(out.pred, out.target, out.mask, config.pair_cutoff))]
    terms += [Term(name, geom(name)) for name in ("bonds", "angles", "omega", "ramachandran", "clashes")]
    terms.append(Term("kl", lambda out: _kl(out, config.free_bits), schedule=kl_schedule))
    return [t for t in terms if t.name == REFERENCE or config.ratios.get(t.name, 0.0) > 0.0]


def make_balancer(config: ObjectiveConfig) -> GradNormRatioBalancer:
    """Gradient-norm ratios to the reconstruction for the active terms (those with a ratio > 0)."""
    return GradNormRatioBalancer(REFERENCE, {t: r for t, r in config.ratios.items() if r > 0.0})


def collapse_diagnostic(out: VAEOutput, active_threshold: float = 0.01) -> dict[str, float | list[float]]:
    """Posterior-collapse diagnostic of one batch: KL per global latent dimension (nats), number of
    active units (Burda et al. 2016: variance over the batch of the posterior mean > threshold),
    total global KL and mean per-residue KL (nats), and the residue latents' active fraction."""
    with torch.no_grad():
        kl = kl_per_dimension(out.mu, out.logvar).mean(0)
        active = out.mu.var(0) > active_threshold if out.mu.shape[0] > 1 else torch.zeros_like(kl, dtype=torch.bool)
        report: dict[str, float | list[float]] = {
            "kl_global_nats": float(kl.sum()), "kl_per_dim": [round(float(v), 4) for v in kl],
            "active_units": float(active.sum()), "latent_dims": float(kl.numel())}
        if out.mu_res is not None:
            mask = out.mask.unsqueeze(-1).to(out.mu_res.dtype)
            kl_res = (kl_per_dimension(out.mu_res, out.logvar_res) * mask).sum() / mask.sum().clamp_min(1)
            var = out.mu_res.var(0) if out.mu_res.shape[0] > 1 else torch.zeros_like(out.mu_res[0])
            report["kl_residue_nats_per_residue"] = float(kl_res * out.mu_res.shape[-1])
            report["residue_active_fraction"] = float((var > active_threshold).to(torch.float64).mean())
        return report


def collapse_flags(report: dict, step: int, after: int) -> list[Flag]:
    """A ``posterior_collapse`` flag when the global latent of :func:`collapse_diagnostic`'s
    ``report`` has no active unit at ``step`` >= ``after`` (steps of the first KL cycle are
    skipped: the latent starts unused). The message says which latents carry the conformations."""
    if step < after or not report or report.get("active_units", 1.0) > 0:
        return []
    carried = ("the per-residue latents carry the conformations "
               f"({report['kl_residue_nats_per_residue']:.3g} nats per residue, "
               f"{100 * report['residue_active_fraction']:.0f}% active)") if "kl_residue_nats_per_residue" in report \
        else "samples will barely vary"
    return [Flag("posterior_collapse", step, f"global latent collapsed: 0/{report['latent_dims']:.0f} active units, "
                 f"KL {report['kl_global_nats']:.3g} nats; {carried}", value=report["kl_global_nats"])]
