"""Rescoring: choose each spectrum's peptide among beam-search and spectrum-graph candidates by
the model's probability combined with how well the candidate's fragment ions explain the peaks.

Strong de novo tools do not trust the decoder's ranking alone: PepNovo and Novor score candidate
sequences by their fragment-ion evidence (Frank & Pevzner 2005; Ma 2015), pNovo 3 reranks its
candidates with spectrum-matching features (Yang et al. 2019), and Casanovo and InstaNovo return
the model's beams for such post-processing (InstaNovo+ refines them; Eloff et al. 2023). Here:

- **Candidates**: every distinct peptide the mass-constrained beam search finished within the
  precursor tolerance (:func:`equipoise.peptide.decoding.beam_candidates`); the peptides of a
  second beam search constrained to pass the inner nodes of the spectrum graph's best path
  (:mod:`equipoise.peptide.baseline`; the graph fixes the mass ladder, the model chooses the
  residues between its nodes, their order and composition); and the graph path itself with
  each unresolved two-residue step in both orders.
- **Model features**: ``logp``, the mean log-probability per token (stop included; teacher
  forced for the graph paths), and ``min_logp``, the log-probability of the least likely residue.
- **Ion evidence** (:func:`ion_evidence`) on the ``n_peaks`` most intense raw peaks with the
  baseline's square-root intensity weights: ``coverage`` (cleavage sites with a b or y ion),
  ``both`` (sites with b and y 1+), ``explained`` (peak weight matched), ``error`` (mean fragment
  m/z error of the matched ions: a composition of almost the same mass, e.g. LE for NK, 0.011 Da
  apart, matches the same peaks less exactly) and ``gap`` (longest run of sites without an ion).
- **Combined score** ``weights . features`` picks the peptide. The weights were chosen on
  synthetic spectra (``benchmarks/peptide_rescoring.py``: seed 5, coordinate search for peptide
  recall + AA precision, checked on seed 7), never on the real evaluation spectra; see
  docs/peptide.md.

Shapes: C candidates of one spectrum, S cleavage sites, P peaks.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from equipoise.peptide.baseline import BaselineConfig, GraphPath, SpectrumGraph
from equipoise.peptide.decoding import DecodingConfig, Prediction, beam_candidates
from equipoise.peptide.fragments import fragment_mz, padded_residue_masses
from equipoise.peptide.io import Spectrum
from equipoise.peptide.model import Memory, PeptideTransformer, SpectrumBatch
from equipoise.peptide.vocab import C13_SPACING, Vocabulary

__all__ = ["FEATURES", "ION_FEATURES", "RescoringConfig", "Candidate", "ion_evidence", "sequence_log_probs",
           "graph_candidates", "choose", "peptide_score", "rescore_batch", "rescore_predictions", "graph_for"]


#: the features of a candidate, in the order of :attr:`RescoringConfig.weights` (module doc)
FEATURES = ("logp", "min_logp", "coverage", "both", "explained", "error", "gap")
#: the ion-evidence features computed by :func:`ion_evidence`
ION_FEATURES = FEATURES[2:]


@dataclass(frozen=True)
class RescoringConfig:
    """``weights``: one per :data:`FEATURES` (fitted on synthetic spectra, seed 5,
    ``benchmarks/peptide_rescoring.py``); ``tol_da``: fragment match and waypoint tolerance;
    ``n_peaks``: most intense raw peaks matched; ``ladder_beams``: beam width of the search
    constrained to the graph path's nodes (0: none); ``graph_paths``: add the graph path itself;
    ``max_pair_orders``: at most this many unresolved pairs of a graph path are tried in both
    orders (2^n variants; the rest stay in mass order); ``triple_penalty``: the candidates'
    spectrum graph also has three-residue edges at this penalty (None: the baseline's graph)."""

    weights: tuple[float, ...] = (1.0, 0.1, 6.0, 2.0, 4.0, -8.0, -1.0)
    tol_da: float = 0.02
    n_peaks: int = 150
    ladder_beams: int = 0
    graph_paths: bool = True
    max_pair_orders: int = 3
    triple_penalty: float | None = 1.5

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"{len(self.weights)} weights for the {len(FEATURES)} features {FEATURES}")


@dataclass
class Candidate:
    """One candidate peptide of a spectrum: ``logp`` the model's mean log-probability per token
    (stop included), ``aa_scores`` the model's probability of each token, ``source`` ``"beam"``,
    ``"ladder"`` or ``"graph"``, ``features`` (:data:`FEATURES`) and ``combined`` score."""

    tokens: list[str]
    logp: float
    aa_scores: list[float]
    source: str
    features: np.ndarray | None = None
    combined: float = -math.inf


def _peaks(spectrum: Spectrum, n_peaks: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_peaks`` most intense peaks sorted by m/z, weights sqrt(intensity / base peak)."""
    mz, intensity = spectrum.mz, spectrum.intensity
    if mz.size > n_peaks:
        top = np.argsort(-intensity, kind="stable")[:n_peaks]
        mz, intensity = mz[top], intensity[top]
    order = np.argsort(mz, kind="stable")
    mz, intensity = mz[order], intensity[order]
    base = intensity.max() if intensity.size else 0.0
    return mz, (np.sqrt(intensity / base) if base > 0 else np.zeros_like(intensity))


def ion_evidence(spectrum: Spectrum, candidates: Sequence[Sequence[str]], vocab: Vocabulary,
                 tol_da: float = 0.02, n_peaks: int = 150) -> np.ndarray:
    """(C, 5) :data:`ION_FEATURES` of each candidate's b/y ions in ``spectrum``: ``coverage``
    (fraction of cleavage sites with a b or y ion observed within ``tol_da``), ``both`` (sites with
    both b and y 1+), ``explained`` (fraction of the peak weight matched), ``error`` (mean
    |m/z error| of the matched ions over ``tol_da``; 1 when none match), ``gap`` (longest run of
    sites without an ion over the number of sites).

    b and y ions of every cleavage site from :func:`equipoise.peptide.fragments.fragment_mz`
    (N-terminal modifications folded into the first residue), 1+ and, only for precursor
    charge >= 3, 2+. A peptide of one residue has no cleavage site (coverage 0, gap 1).
    """
    mz, weight = _peaks(spectrum, n_peaks)
    total = weight.sum()
    out = np.zeros((len(candidates), len(ION_FEATURES)))
    out[:, 3:] = 1.0
    residues = [vocab.residue_masses(tokens) for tokens in candidates]
    sites = np.array([len(r) - 1 for r in residues], dtype=np.int64)                       # (C,)
    scored = np.flatnonzero(sites >= 1)
    if mz.size == 0 or scored.size == 0:
        return out
    sites = sites[scored]
    masses, mask = padded_residue_masses([residues[c] for c in scored])
    ions, valid = fragment_mz(masses, mask, charges=(1, 2) if spectrum.charge >= 3 else (1,))  # (C, types, S)
    ions, valid = ions.numpy(), valid.numpy()
    right = np.clip(np.searchsorted(mz, ions), 1, mz.size - 1) if mz.size > 1 else np.zeros(ions.shape, int)
    left = np.clip(right - 1, 0, None)
    nearest = np.where(np.abs(ions - mz[left]) <= np.abs(ions - mz[right]), left, right)
    error = np.abs(ions - mz[nearest])
    hit = (error <= tol_da) & valid                                                        # (C, types, S)
    site = hit.any(axis=1)                                                                 # (C, S)
    matched = np.zeros((scored.size, mz.size), dtype=bool)
    matched[np.nonzero(hit)[0], nearest[hit]] = True
    hits = hit.sum(axis=(1, 2))
    out[scored, 0] = site.sum(axis=1) / sites
    out[scored, 1] = (hit[:, 0] & hit[:, 1]).sum(axis=1) / sites
    out[scored, 2] = (matched * weight).sum(axis=1) / total if total > 0 else 0.0
    out[scored, 3] = np.where(hits > 0, (error * hit).sum(axis=(1, 2)) / np.maximum(hits, 1) / tol_da, 1.0)
    for row, c in enumerate(scored):
        run = longest = 0
        for present in site[row, :sites[row]].tolist():
            run = 0 if present else run + 1
            longest = max(longest, run)
        out[c, 4] = longest / sites[row]
    return out


@torch.no_grad()
def sequence_log_probs(model: PeptideTransformer, memory: Memory, rows: Sequence[int],
                       candidates: Sequence[Sequence[str]]) -> list[list[float]]:
    """Teacher-forced log-probability of every token of each candidate (stop last) given
    spectrum ``rows[i]`` of ``memory`` (one encoded batch, group 1)."""
    vocab = model.vocab
    if not candidates:
        return []
    ids = [vocab.encode(t) for t in candidates]
    length = max(len(i) for i in ids)
    tokens = torch.zeros(len(ids), length, dtype=torch.long, device=model.device)
    for r, i in enumerate(ids):
        tokens[r, :len(i)] = torch.tensor(i, dtype=torch.long)
    index = torch.tensor(list(rows), dtype=torch.long, device=model.device)
    logp = torch.log_softmax(model.decode(memory.select(index), tokens)[0].to(torch.float64), -1)  # (R, T+1, V)
    out = []
    for r, i in enumerate(ids):
        target = torch.tensor(i + [vocab.stop_index], dtype=torch.long, device=model.device)
        out.append(logp[r, torch.arange(len(i) + 1), target].tolist())
    return out


def graph_candidates(path: GraphPath, max_pair_orders: int = 3) -> list[list[str]]:
    """A spectrum-graph path with each of its first ``max_pair_orders`` two-residue steps in
    both orders (distinct peptides only)."""
    steps = path.steps
    pairs = [i for i, step in enumerate(steps) if len(step) == 2 and step[0] != step[1]][:max_pair_orders]
    out: list[list[str]] = []
    for flips in itertools.product((False, True), repeat=len(pairs)):
        chosen = list(steps)
        for i, flip in zip(pairs, flips):
            if flip:
                chosen[i] = chosen[i][::-1]
        tokens = [t for step in chosen for t in step]
        if tokens not in out:
            out.append(tokens)
    return out


def choose(candidates: list[Candidate], config: RescoringConfig) -> Candidate | None:
    """Set each candidate's combined score (weights . features); return the best (None for no
    candidates)."""
    weights = np.asarray(config.weights)
    for c in candidates:
        c.combined = float(weights @ c.features)
    return max(candidates, key=lambda c: c.combined, default=None)


def rescore_batch(model: PeptideTransformer, batch: SpectrumBatch, spectra: Sequence[Spectrum],
                  decoding: DecodingConfig, config: RescoringConfig, graph: SpectrumGraph | None = None
                  ) -> list[tuple[list[Candidate], Prediction | None]]:
    """Per spectrum of ``batch`` (``spectra``: the same spectra, raw): its scored candidates
    within the precursor tolerance (empty when there are none) and the beam search's best
    peptide outside it (the fallback, None otherwise)."""
    vocab = model.vocab
    batch = batch.to(model.device)
    use_graph = graph is not None and bool(config.ladder_beams or config.graph_paths)
    # the graph search (numpy and Python) runs in a second thread while torch decodes the beams
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda: [graph.best_path(s) for s in spectra]) if use_graph else None
        memory = model.encode(batch.mz, batch.intensity, batch.peak_padding, batch.precursor_mass, batch.charge)
        found = beam_candidates(model, batch, decoding, memory=memory)
        paths = pending.result() if pending is not None else []
    cands_of: list[list[Candidate]] = [
        [Candidate(p.tokens, math.log(max(p.score, 1e-300)), p.aa_scores, "beam") for p in ps if p.within_tolerance]
        for ps in found]
    fallback = [None if not ps or ps[0].within_tolerance else ps[0] for ps in found]
    if use_graph:
        rows = [r for r, p in enumerate(paths) if p is not None]
        if rows and config.ladder_beams:
            _add_ladder_candidates(model, batch, memory, rows, [paths[r] for r in rows], decoding, config, cands_of)
        if rows and config.graph_paths:
            extra_rows, extra_tokens = [], []
            for r in rows:
                known = {tuple(c.tokens) for c in cands_of[r]}
                for tokens in graph_candidates(paths[r], config.max_pair_orders):
                    if tuple(tokens) not in known and _within(vocab, tokens, spectra[r], decoding):
                        extra_rows.append(r)
                        extra_tokens.append(tokens)
            for r, tokens, token_logp in zip(extra_rows, extra_tokens,
                                             sequence_log_probs(model, memory, extra_rows, extra_tokens)):
                cands_of[r].append(Candidate(tokens, float(np.mean(token_logp)), np.exp(token_logp[:-1]).tolist(),
                                             "graph"))
    for spectrum, cands in zip(spectra, cands_of):
        if cands:
            evidence = ion_evidence(spectrum, [c.tokens for c in cands], vocab, config.tol_da, config.n_peaks)
            for c, ions in zip(cands, evidence):
                c.features = np.concatenate([[c.logp, math.log(max(min(c.aa_scores, default=1.0), 1e-300))], ions])
            choose(cands, config)
    return list(zip(cands_of, fallback))


def peptide_score(candidate: Candidate, config: RescoringConfig) -> float:
    """The combined score mapped into (0, 1]: exp(combined - its largest possible value), the
    model terms and the penalties at 0 and every bounded ion feature at 1 (monotone in the
    combined score, so it ranks as the combined score does)."""
    weights = np.asarray(config.weights)
    bounded = np.array([name in ("coverage", "both", "explained") for name in FEATURES])
    return math.exp(candidate.combined - float(np.clip(weights[bounded], 0, None).sum()))


def rescore_predictions(model: PeptideTransformer, batch: SpectrumBatch, spectra: Sequence[Spectrum],
                        decoding: DecodingConfig, config: RescoringConfig
                        ) -> list[tuple[list[str], float, list[float]] | None]:
    """(tokens, peptide score, per-token scores) chosen for each spectrum of ``batch``: the best
    candidate by the combined score (score :func:`peptide_score`), else the beam search's best
    peptide outside the tolerance (its score, below 0), else None."""
    out: list[tuple[list[str], float, list[float]] | None] = []
    for cands, fallback in rescore_batch(model, batch, spectra, decoding, config, graph_for(model.vocab, config)):
        best = max(cands, key=lambda c: c.combined, default=None)
        if best is not None:
            out.append((best.tokens, peptide_score(best, config), best.aa_scores))
        else:
            out.append(None if fallback is None else (fallback.tokens, fallback.score, fallback.aa_scores))
    return out


def graph_for(vocab: Vocabulary, config: RescoringConfig) -> SpectrumGraph:
    """The spectrum graph that makes the candidates of ``config``."""
    return _graph(vocab, config.tol_da, config.triple_penalty)


@lru_cache(maxsize=4)
def _graph(vocab: Vocabulary, tol_da: float, triple_penalty: float | None) -> SpectrumGraph:
    return SpectrumGraph(vocab, BaselineConfig(tol_da=tol_da, triple_penalty=triple_penalty))


def _add_ladder_candidates(model: PeptideTransformer, batch: SpectrumBatch, memory: Memory, rows: list[int],
                           paths: list[GraphPath], decoding: DecodingConfig, config: RescoringConfig,
                           cands_of: list[list[Candidate]]) -> None:
    """Beam search of spectra ``rows`` constrained to pass the nodes of their graph ``paths``;
    its peptides within the tolerance join the candidates (source ``"ladder"``)."""
    width = max(len(p.nodes) for p in paths)
    waypoints = torch.full((len(rows), max(width, 1)), math.inf, dtype=torch.float64)
    for i, p in enumerate(paths):
        waypoints[i, :len(p.nodes)] = torch.tensor(p.nodes, dtype=torch.float64)
    index = torch.tensor(rows, dtype=torch.long, device=model.device)
    sub = SpectrumBatch(batch.mz[index], batch.intensity[index], batch.peak_padding[index],
                        batch.precursor_mass[index], batch.charge[index], None, [batch.index[r] for r in rows])
    found = beam_candidates(model, sub, replace(decoding, beams=config.ladder_beams), waypoints=waypoints,
                            waypoint_tol_da=config.tol_da, memory=memory.select(index))
    for r, predictions in zip(rows, found):
        known = {tuple(c.tokens) for c in cands_of[r]}
        for p in predictions:
            if p.within_tolerance and tuple(p.tokens) not in known:
                cands_of[r].append(Candidate(p.tokens, math.log(max(p.score, 1e-300)), p.aa_scores, "ladder"))


def _within(vocab: Vocabulary, tokens: Sequence[str], spectrum: Spectrum, decoding: DecodingConfig) -> bool:
    """The peptide's neutral mass matches the precursor within the tolerance for an allowed isotope."""
    mass, observed = vocab.neutral_mass(tokens), spectrum.neutral_mass
    return any(abs(observed - n * C13_SPACING - mass) <= observed * decoding.precursor_tol_ppm * 1e-6
               for n in decoding.isotopes)
