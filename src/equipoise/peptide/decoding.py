"""Mass-aware beam search: spectra in, one best peptide per spectrum out (the model never writes).

- **Precursor-mass constraint** (Casanovo, Yilmaz et al. 2022, ``casanovo/denovo/model.py``
  ``_finish_beams``): the observed precursor may be the monoisotopic peak or the first 13C
  isotope (``isotopes=(0, 1)``); a residue that takes the prefix beyond every allowed target
  mass by more than the tolerance is not extended, and a finished peptide outside the tolerance
  ranks below every peptide within it (its score is lowered by 1, as Casanovo does).
- **Mass-feasibility pruning** (InstaNovo's knapsack beam search, Eloff et al. 2023): a prefix is
  kept only when the remaining mass can be written as a sum of residue masses within the
  tolerance; :class:`MassFeasibility` answers that from a table of reachable masses.
- Scores: per-residue score = the model's probability of that residue; peptide score = geometric
  mean of the probabilities of all its tokens (stop included), minus 1 outside the tolerance.

Beams are ranked by their summed log-probability. Shapes: B spectra, K beams, V tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from equipoise.errors import InputError
from equipoise.peptide.io import Spectrum
from equipoise.peptide.model import Memory, PeptideTransformer, SpectrumBatch, collate, prepare
from equipoise.peptide.psm import PSM
from equipoise.peptide.vocab import C13_SPACING, H2O_MASS, Vocabulary

if TYPE_CHECKING:
    from equipoise.peptide.rescoring import RescoringConfig

__all__ = ["DecodingConfig", "Prediction", "MassFeasibility", "beam_search", "beam_candidates", "predict"]


@dataclass(frozen=True)
class DecodingConfig:
    """``beams``: beam width; ``precursor_tol_ppm``: precursor tolerance; ``isotopes``: 13C
    isotope errors allowed in the precursor m/z; ``max_length``: most tokens (None: the model's)."""

    beams: int = 5
    precursor_tol_ppm: float = 20.0
    isotopes: tuple[int, ...] = (0, 1)
    max_length: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.beams, int) or self.beams < 1:
            raise InputError(f"beams must be an integer >= 1, got {self.beams!r}", field="beams")
        if not (self.precursor_tol_ppm > 0 and math.isfinite(self.precursor_tol_ppm)):
            raise InputError(f"precursor tolerance must be > 0 ppm, got {self.precursor_tol_ppm!r}",
                             field="precursor_tol")


@dataclass
class Prediction:
    """Best peptide of one spectrum: ``tokens`` (vocabulary tokens, N- to C-terminus), ``score``
    (peptide score, see module doc), ``aa_scores`` (one probability per token), ``within_tolerance``
    and ``isotope`` (13C offset that matched best), ``neutral_mass`` (calculated, Da)."""

    tokens: list[str]
    score: float
    aa_scores: list[float]
    within_tolerance: bool
    isotope: int
    neutral_mass: float


class MassFeasibility:
    """Which masses are sums of residue masses: a boolean table on a ``resolution`` Da grid up to
    ``max_mass`` Da, built by dynamic programming (unbounded knapsack). Residue masses are
    rounded to the grid, so each residue adds up to ``resolution / 2`` of rounding error; the
    query window is widened by that much per residue the remaining mass can hold."""

    def __init__(self, masses: tuple[float, ...], max_mass: float = 6000.0, resolution: float = 0.01) -> None:
        self.resolution, self.max_mass = resolution, max_mass
        self.min_mass = min(masses)
        steps = sorted({int(round(m / resolution)) for m in masses})
        size = int(math.ceil(max_mass / resolution)) + 1
        reachable = np.zeros(size, dtype=bool)
        reachable[0] = True
        chunk = steps[0]
        for start in range(chunk, size, chunk):       # every entry depends only on earlier chunks
            stop = min(start + chunk, size)
            for s in steps:
                if s <= stop:
                    lo = max(start, s)
                    reachable[lo:stop] |= reachable[lo - s:stop - s]
        self.cumulative = torch.from_numpy(np.concatenate([[0], np.cumsum(reachable)])).to(torch.int64)

    def feasible(self, remaining: Tensor, tolerance: Tensor) -> Tensor:
        """Bool tensor, same shape as ``remaining`` (Da): some sum of residues lies within
        ``tolerance`` (Da, broadcastable) of it. Masses beyond the table count as feasible."""
        slack = tolerance + (remaining.clamp(min=0) / self.min_mass + 1) * self.resolution / 2
        lo = ((remaining - slack) / self.resolution).ceil().clamp(min=0)
        hi = ((remaining + slack) / self.resolution).floor()
        size = self.cumulative.numel() - 1
        beyond = hi >= size
        lo_i = lo.clamp(max=size).long()
        hi_i = hi.clamp(min=-1, max=size - 1).long()
        cumulative = self.cumulative.to(remaining.device)
        count = cumulative[hi_i + 1] - cumulative[lo_i]
        return ((count > 0) & (hi_i >= lo_i)) | beyond


@lru_cache(maxsize=4)
def _feasibility(masses: tuple[float, ...]) -> MassFeasibility:
    return MassFeasibility(masses)


def _residue_masses(vocab: Vocabulary) -> tuple[float, ...]:
    return tuple(vocab.token_masses[i] for i in vocab.residue_indices)


@torch.no_grad()
def beam_search(model: PeptideTransformer, batch: SpectrumBatch, config: DecodingConfig = DecodingConfig()
                ) -> list[Prediction | None]:
    """Decode every spectrum of ``batch``; None where no peptide fits at all (precursor lighter
    than one residue)."""
    return [found[0] if found else None for found in beam_candidates(model, batch, config)]


@torch.no_grad()
def beam_candidates(model: PeptideTransformer, batch: SpectrumBatch, config: DecodingConfig = DecodingConfig(),
                    waypoints: Tensor | None = None, waypoint_tol_da: float = 0.02,
                    memory: Memory | None = None) -> list[list[Prediction]]:
    """Every distinct peptide the beam search finished within the precursor tolerance, per
    spectrum of ``batch``, best peptide score first (the candidates a rescorer chooses from); a
    spectrum with none gets its best finished peptide outside the tolerance (empty list when
    nothing fits at all).

    ``waypoints`` (B, W) float64, ascending, padded with +inf: prefix masses (Da, residue sums)
    every peptide must pass within ``waypoint_tol_da``, e.g. the nodes of a spectrum-graph path;
    a residue may not jump over the next waypoint, and the mass left up to it must be a sum of
    residues (the same feasibility test as for the precursor). The model then chooses the
    residues between waypoints (their order and composition), the graph fixes the ladder.
    ``memory``: the batch already encoded by ``model.encode`` (else it is encoded here)."""
    vocab = model.vocab
    device = model.device
    n, k, v = batch.mz.shape[0], config.beams, len(vocab)
    max_length = config.max_length or model.config.max_length
    masses = vocab.mass_tensor(dtype=torch.float64, device=device)
    feasibility = _feasibility(_residue_masses(vocab))
    is_residue = torch.zeros(v, dtype=torch.bool, device=device)
    is_residue[list(vocab.residue_indices)] = True
    is_nterm = torch.zeros(v, dtype=torch.bool, device=device)
    is_nterm[list(vocab.n_terminal_indices)] = True

    batch = batch.to(device)
    precursor = batch.precursor_mass.to(torch.float64)                                  # (B,)
    tolerance = precursor * config.precursor_tol_ppm * 1e-6                              # (B,) Da
    offsets = torch.tensor(config.isotopes, dtype=torch.float64, device=device) * C13_SPACING
    targets = precursor[:, None] - offsets[None] - H2O_MASS                              # (B, I) residue sums
    if memory is None:
        memory = model.encode(batch.mz, batch.intensity, batch.peak_padding, batch.precursor_mass, batch.charge)
    memory = memory.repeat(k)
    cache = None
    if waypoints is not None:
        waypoints = waypoints.to(device=device, dtype=torch.float64)
        waypoint_tol = torch.tensor(waypoint_tol_da, dtype=torch.float64, device=device)

    tokens = torch.zeros(n * k, 0, dtype=torch.long, device=device)
    logp_path = torch.zeros(n * k, 0, dtype=torch.float64, device=device)
    score = torch.full((n, k), -math.inf, dtype=torch.float64, device=device)
    score[:, 0] = 0.0
    prefix = torch.zeros(n, k, dtype=torch.float64, device=device)
    found: list[dict[tuple[str, ...], Prediction]] = [{} for _ in range(n)]
    outside: list[Prediction | None] = [None] * n

    for step in range(max_length + 1):
        active = torch.isfinite(score)
        if not bool(active.any()):
            break
        logits, cache = model.decode(memory, tokens, cache)
        logits = logits[:, -1]
        logp = torch.log_softmax(logits.to(torch.float64), -1).view(n, k, v)
        if step > 0:  # finishing here: record the stopped peptide of every active beam
            _finish(vocab, tokens.view(n, k, -1), logp_path.view(n, k, -1), logp[..., vocab.stop_index], prefix,
                    targets, tolerance, config.isotopes, active, found, outside)
        if step == max_length:
            break
        remaining = targets[:, None, :, None] - prefix[:, :, None, None] - masses[None, None, None, :]  # (B,K,I,V)
        tol = tolerance[:, None, None, None]
        fits = ((remaining >= -tol) & feasibility.feasible(remaining, tol)).any(dim=2)                  # (B,K,V)
        if waypoints is not None:
            ahead = waypoints[:, None, :] > prefix[..., None] + waypoint_tol                           # (B,K,W)
            upcoming = torch.where(ahead, waypoints[:, None, :], math.inf).min(dim=2).values           # (B,K)
            free = torch.isinf(upcoming)[..., None]
            gap = torch.where(free, 0.0, upcoming[..., None]) - prefix[..., None] - masses                  # (B,K,V)
            fits &= free | ((gap >= -waypoint_tol) & feasibility.feasible(gap, waypoint_tol))
        allowed = fits & is_residue if step > 0 else fits & (is_residue | is_nterm)
        candidate = torch.where(allowed & active[..., None], score[..., None] + logp, -math.inf).view(n, k * v)
        top, index = candidate.topk(k, dim=1)
        beam, token = index // v, index % v
        rows = (torch.arange(n, device=device)[:, None] * k + beam).reshape(-1)
        tokens = torch.cat([tokens[rows], token.reshape(-1, 1)], dim=1)
        cache = [(key[rows], value[rows]) for key, value in cache]
        chosen = logp.view(n, k * v).gather(1, index).reshape(-1, 1)
        logp_path = torch.cat([logp_path[rows], chosen], dim=1)
        prefix = prefix.gather(1, beam) + masses[token]
        score = top
    out = []
    for within, fallback in zip(found, outside):
        ranked = sorted(within.values(), key=lambda p: -p.score)
        out.append(ranked if ranked else [fallback] if fallback is not None else [])
    return out


def _finish(vocab: Vocabulary, tokens: Tensor, logp_path: Tensor, logp_stop: Tensor, prefix: Tensor,
            targets: Tensor, tolerance: Tensor, isotopes: tuple[int, ...], active: Tensor,
            found: list[dict[tuple[str, ...], Prediction]], outside: list[Prediction | None]) -> None:
    """Score the stopped peptide of each active beam (B, K): keep every one within the tolerance
    in ``found`` (per spectrum, by tokens) and each spectrum's best one outside it in ``outside``."""
    errors = (prefix[:, :, None] - targets[:, None, :]).abs()                            # (B, K, I)
    error, isotope = errors.min(dim=2)
    within = error <= tolerance[:, None]
    total = logp_path.sum(-1) + logp_stop
    score = torch.exp(total / (logp_path.shape[-1] + 1))

    def prediction(b: int, j: int, inside: bool) -> Prediction:
        return Prediction(tokens=vocab.decode(tokens[b, j].tolist()), score=float(score[b, j]) - (not inside),
                          aa_scores=torch.exp(logp_path[b, j]).tolist(), within_tolerance=inside,
                          isotope=isotopes[int(isotope[b, j])], neutral_mass=float(prefix[b, j]) + H2O_MASS)

    for b, j in torch.nonzero(active & within).tolist():
        p = prediction(b, j, True)
        key = tuple(p.tokens)
        if key not in found[b] or found[b][key].score < p.score:
            found[b][key] = p
    key = torch.where(active & ~within, score, -math.inf)
    value, beam = key.max(dim=1)
    for b in torch.nonzero(torch.isfinite(value)).flatten().tolist():
        if not found[b] and (outside[b] is None or outside[b].score < float(value[b]) - 1):
            outside[b] = prediction(b, int(beam[b]), False)


def predict(model: PeptideTransformer, spectra: Sequence[Spectrum], config: DecodingConfig = DecodingConfig(),
            batch_size: int = 64, progress: Callable[[int], None] | None = None,
            rescoring: "RescoringConfig | None" = None) -> list[PSM]:
    """One :class:`~equipoise.peptide.psm.PSM` per spectrum (in input order; an empty peptide
    where nothing fits). Spectra are preprocessed as the model was trained and decoded in batches
    of ``batch_size``; ``progress(done)`` is called after each batch. With ``rescoring``
    (:mod:`equipoise.peptide.rescoring`) each spectrum's peptide is chosen among the beam-search
    and spectrum-graph candidates by the combined score (the peptide score is then
    :func:`~equipoise.peptide.rescoring.peptide_score`); without it, the best beam."""
    from equipoise.peptide.rescoring import rescore_predictions  # rescoring builds on this module

    model.eval()
    vocab = model.vocab
    psms: list[PSM] = []
    for start in range(0, len(spectra), batch_size):
        chunk = spectra[start:start + batch_size]
        batch = collate([prepare(s, vocab, model.config) for s in chunk])
        if rescoring is None:
            chosen = [None if p is None else (p.tokens, p.score, p.aa_scores)
                      for p in beam_search(model, batch, config)]
        else:
            chosen = rescore_predictions(model, batch, chunk, config, rescoring)
        for spectrum, c in zip(chunk, chosen):
            tokens, score, aa = ([], -1.0, []) if c is None else c
            psms.append(PSM(spectrum.index, tokens, score, aa, spectrum.charge, spectrum.precursor_mz,
                            title=spectrum.title, retention_time_s=spectrum.retention_time_s, vocabulary=vocab))
        if progress is not None:
            progress(len(psms))
    return psms
