"""Sampling conformers from a trained ensemble VAE, with a post-hoc geometry refinement.

- **Prior** (conditioned on the sequence): z ~ N(0, T^2 I), decoded from templates drawn (seeded)
  from the run's templates; T is the user's temperature times the run's calibrated temperature
  (:func:`equipoise.ensemble.train.calibrate_temperature`: the prior spread matches the training
  models').
- **Posterior** around given conformers: z ~ q(z | x) with its standard deviation scaled by T,
  decoded from the conformer itself.
- **Refinement** (optional, on by default): L-BFGS steps (float32) of the geometry terms of
  :func:`equipoise.ensemble.objective.geometry_terms` (clashes on candidate pairs, strongly
  weighted) plus a harmonic restraint (sigma ``restraint_sigma`` Å) to the decoded atoms, as one
  :class:`equipoise.core.Fit`; then :func:`polish` refines again the conformers that still
  clash or break. It fixes bond lengths and angles (the decoder's bond noise) and clashes while
  moving atoms by about a third of an Å (2K39); the measured displacement is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from equipoise.core import Fit, Stage, Term
from equipoise.ensemble.geometry import chain_breaks, clash_candidates, clash_count
from equipoise.ensemble.io import Ensemble
from equipoise.ensemble.model import EnsembleVAE
from equipoise.ensemble.objective import geometry_terms
from equipoise.ensemble.train import DTYPE, load_model, protein_entry
from equipoise.errors import InputError

__all__ = ["SampleConfig", "SampleResult", "sample", "decode_prior", "decode_posterior", "refine_geometry",
           "polish", "flawed"]

#: weights of the refinement (dimensionless; geometry terms are in sigma units, see objective.py)
REFINE_WEIGHTS = {"bonds": 1.0, "angles": 1.0, "omega": 1.0, "ramachandran": 1.0, "clashes": 1000.0}
#: Å: pairs within this of clashing at the start are the refinement's clash candidates
CLASH_MARGIN = 1.0
#: Å: the refinement pushes pairs this far beyond the clash distance (a quadratic penalty leaves a
#: small residual overlap, which would still count as a clash)
CLASH_BUFFER = 0.15
#: further refinements of the conformers that still clash or break (:func:`polish`)
POLISH_ROUNDS = 1


@dataclass
class SampleConfig:
    """``n``: conformers; ``seed``; ``temperature``: scale of the latent spread (1: the prior at the
    run's calibrated temperature);
    ``refine_steps``: L-BFGS steps of the geometry refinement (0: none); ``restraint_sigma``: Å."""

    n: int = 100
    seed: int = 1
    temperature: float = 1.0
    refine_steps: int = 25
    restraint_sigma: float = 0.3

    def check(self) -> None:
        """InputError for impossible settings."""
        if self.n < 1:
            raise InputError(f"need at least 1 conformer, got {self.n}", field="--n")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}", field="--temperature")
        if self.refine_steps < 0 or not self.restraint_sigma > 0:
            raise InputError(f"refine steps must be >= 0 and restraint sigma > 0 Å, got {self.refine_steps}, "
                             f"{self.restraint_sigma}", field="refine")


@dataclass
class SampleResult:
    """Sampled conformers as an :class:`Ensemble`, with timings (s) and the refinement's effect."""

    ensemble: Ensemble
    decode_seconds: float
    refine_seconds: float
    refinement: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A readable line."""
        moved = self.refinement.get("rms_displacement_A")
        extra = f", refinement moved atoms by {moved:.3f} Å rms" if moved is not None else ""
        return (f"{self.ensemble.coords.shape[0]} conformers: decode {self.decode_seconds:.2f} s, "
                f"refine {self.refine_seconds:.2f} s{extra}")


def decode_prior(model: EnsembleVAE, templates: Tensor, mask: Tensor, n: int, temperature: float,
                 generator: torch.Generator, protein: int = 0) -> Tensor:
    """``n`` conformers (n, n_res, 4, 3) float64 Å of protein ``protein`` from the prior, decoded
    from templates (m, n_res, 4, 3) drawn with ``generator``."""
    pick = torch.randint(templates.shape[0], (n,), generator=generator)
    z, z_res = model.prior(n, temperature, generator, DTYPE, protein)
    with torch.no_grad():
        out = model.decode(templates[pick].to(DTYPE), mask.expand(n, -1), z, z_res, protein)
    return out.to(torch.float64)


def decode_posterior(model: EnsembleVAE, conformers: Tensor, mask: Tensor, per_conformer: int,
                     temperature: float, generator: torch.Generator, protein: int = 0) -> Tensor:
    """``per_conformer`` samples of q(z | x) around each of ``conformers`` (m, n_res, 4, 3) of
    protein ``protein``, decoded from the conformer itself -> (m * per_conformer, n_res, 4, 3)
    float64 Å."""
    x = conformers.to(DTYPE).repeat_interleave(per_conformer, dim=0)
    m = mask.expand(x.shape[0], -1)
    with torch.no_grad():
        mu, logvar, mu_r, logvar_r = model.encode(x, m, protein)
        z = mu + temperature * (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, dtype=DTYPE)
        z_res = None
        if mu_r is not None:
            z_res = mu_r + temperature * (0.5 * logvar_r).exp() * torch.randn(mu_r.shape, generator=generator,
                                                                             dtype=DTYPE)
        out = model.decode(x, m, z, z_res, protein)
    return out.to(torch.float64)


def refine_geometry(coords: Tensor, mask: Tensor, steps: int, restraint_sigma: float = 0.3,
                    sequence: str | None = None, run_dir: str | Path | None = None,
                    dtype: torch.dtype = torch.float64) -> tuple[Tensor, dict]:
    """L-BFGS refinement of backbones (B, n, 4, 3) Å (residue mask (n,), one-letter ``sequence``
    for Gly/Pro targets) on the geometry terms plus a harmonic restraint to the starting atoms
    (mean squared displacement / sigma^2), computed in ``dtype``. Clashes are judged on the atom
    pairs within ``CLASH_MARGIN`` Å of clashing at the start (:func:`clash_candidates`), pushed
    ``CLASH_BUFFER`` Å beyond the clash distance. Returns the refined coordinates (float64) and a
    report (rms displacement Å, term values before and after, the clash term over the candidates)."""
    start = coords.detach().to(dtype)
    xyz = start.clone().requires_grad_(True)
    batch_mask = mask.expand(start.shape[0], -1)
    atoms = batch_mask.unsqueeze(-1).to(dtype)
    pairs = clash_candidates(start, batch_mask, CLASH_MARGIN)

    def terms_of(x: Tensor) -> dict[str, Tensor]:
        return geometry_terms(x, batch_mask, sequence, pairs, CLASH_BUFFER)

    def restraint(_: dict) -> Tensor:
        sq = ((xyz - start).square().sum(-1) * atoms).sum() / (4.0 * atoms.sum())
        return sq / restraint_sigma ** 2

    terms = [Term(name, (lambda key: lambda values: values[key])(name), weight=w) for name, w in REFINE_WEIGHTS.items()]
    terms.append(Term("restraint", restraint))
    with torch.no_grad():
        before = {k: float(v) for k, v in terms_of(start).items()}
    fit = Fit({"xyz": xyz}, terms, [Stage("refine", free=["xyz"], optimizer="lbfgs", lr=1.0, steps=steps)],
              forward=lambda: terms_of(xyz), run_dir=run_dir, progress="quiet", log_every=max(1, steps),
              grad_every=max(1, steps))
    fit.run(resume=False)
    refined = xyz.detach()
    with torch.no_grad():
        after = {k: float(v) for k, v in terms_of(refined).items()}
        moved = float(((refined - start).square().sum(-1) * atoms).sum() / (4.0 * atoms.sum())) ** 0.5
    return refined.to(torch.float64), {"steps": steps, "rms_displacement_A": moved, "before": before,
                                       "after": after}


def flawed(coords: Tensor, mask: Tensor) -> Tensor:
    """Models (B,) bool of backbones (B, n, 4, 3) Å with a clash or a chain break (the validation's
    all-pairs count; residue mask (n,))."""
    batch_mask = mask.expand(coords.shape[0], -1)
    x = coords.to(DTYPE)  # a count, not a loss: float32 halves the all-pairs distance work
    return (clash_count(x, batch_mask) > 0) | (chain_breaks(x, batch_mask) > 0)


def polish(coords: Tensor, mask: Tensor, config: SampleConfig, sequence: str | None = None) -> tuple[Tensor, dict]:
    """:func:`refine_geometry` of every conformer (B, n, 4, 3) Å, then up to ``POLISH_ROUNDS``
    more refinements (``2 * config.refine_steps`` steps, restrained to the current atoms) of the
    conformers that still clash or break (:func:`flawed`): a decoded tail threaded through the body
    needs more steps than the bond noise. Nothing is discarded. Returns float64 coordinates and the
    first refinement's report with ``rms_displacement_A`` from the decoded atoms and ``polished``
    (flawed conformers before each further round)."""
    start = coords.to(torch.float64)
    refined, report = refine_geometry(start, mask, config.refine_steps, config.restraint_sigma, sequence, dtype=DTYPE)
    report["polished"] = []
    for _ in range(POLISH_ROUNDS):
        bad = flawed(refined, mask)
        report["polished"].append(int(bad.sum()))
        if not bad.any():
            break
        refined[bad], _ = refine_geometry(refined[bad], mask, 2 * config.refine_steps, config.restraint_sigma,
                                          sequence, dtype=DTYPE)
    atoms = mask.view(1, -1, 1).to(torch.float64)
    moved = ((refined - start).square().sum(-1) * atoms).sum() / (4.0 * atoms.sum() * start.shape[0])
    report["rms_displacement_A"] = float(moved) ** 0.5
    return refined, report


def sample(run_dir: str | Path, config: SampleConfig | None = None, around: Tensor | None = None,
           protein: int | str | None = None) -> SampleResult:
    """Sample ``config.n`` conformers from the VAE trained in ``run_dir``: from the prior, or, with
    ``around`` (m, n_res, 4, 3) Å, from the posterior around those conformers (n split evenly,
    rounded up). ``protein``: name or index of the protein for a model trained on several (None
    for one). Returns the conformers as an Ensemble with the protein's real sequence."""
    config = config or SampleConfig()
    config.check()
    model, payload = load_model(run_dir)
    index, entry = protein_entry(payload, protein)
    mask = entry["residue_mask"]
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    if around is None:
        temperature = config.temperature * entry["temperature"]
        coords = decode_prior(model, entry["templates"], mask, config.n, temperature, generator, index)
    else:
        around = torch.as_tensor(around, dtype=torch.float64)
        if tuple(around.shape[1:]) != tuple(entry["templates"].shape[1:]):
            raise InputError(f"conformers have shape {tuple(around.shape[1:])}, the model expects "
                             f"{tuple(entry['templates'].shape[1:])}", field="around")
        per = -(-config.n // around.shape[0])
        coords = decode_posterior(model, around, mask, per, config.temperature, generator, index)[: config.n]
    decoded = time.perf_counter()
    report: dict = {}
    if config.refine_steps:
        coords, report = polish(coords, mask, config, entry["sequence"])
    refined = time.perf_counter()
    full_mask = mask.view(1, -1, 1).expand(coords.shape[0], -1, 4).clone()
    ensemble = Ensemble(coords, full_mask, entry["sequence"], tuple(entry["residue_names"]),
                        tuple(entry["residue_numbers"]), entry["chain_id"], f"sampled from {run_dir}",
                        tuple(range(1, coords.shape[0] + 1)))
    return SampleResult(ensemble, decoded - started, refined - decoded, report)
