"""The no-learning reference: spectrum-graph longest-path de novo sequencing.

The classic spectrum graph (Dancik et al. 1999, "De novo peptide sequencing via tandem mass
spectrometry", J Comput Biol 6:327; Chen et al. 2001): every peak is read both as a b ion and as
a y ion, each reading implying a prefix residue mass; these are the nodes, with 0 and the total
residue mass (precursor neutral mass - H2O) as source and sink. Nodes closer than ``merge_da`` are
merged and their support summed, so a b ion and its complementary y ion reinforce one node. Two
nodes are joined when their mass difference is one residue, or two residues at a penalty, within
``tol_da`` (0.02 Da). The sequence is the highest-scoring source-to-sink path (dynamic programming
over the nodes in mass order). Residues of identical mass resolve to the unmodified one (I/L to L,
N[Deamidated] to D, Q[Deamidated] to E); the order inside a two-residue edge is unknown and
written lighter-first.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from equipoise.peptide.io import Spectrum
from equipoise.peptide.psm import PSM
from equipoise.peptide.vocab import DEFAULT_VOCABULARY, H2O_MASS, PROTON_MASS, Vocabulary


@dataclass(frozen=True)
class BaselineConfig:
    """Spectrum-graph settings."""

    tol_da: float = 0.02
    merge_da: float = 0.01
    pair_penalty: float = 1.0         #: per two-residue edge, in peak-score units (chosen on synthetic data)
    triple_penalty: float | None = None  #: per three-residue edge; None: no such edges (the baseline)
    n_peaks: int = 150                #: most intense peaks used


@dataclass
class GraphPath:
    """A source-to-sink path: ``steps`` (one residue, or the two of an unresolved pair in mass
    order), ``nodes`` the prefix masses (Da) of its inner nodes as measured (ascending),
    ``score`` the peptide score and ``aa_scores`` one score per residue (see
    :meth:`SpectrumGraph.sequence`)."""

    steps: list[tuple[str, ...]]
    nodes: list[float]
    score: float
    aa_scores: list[float]

    @property
    def tokens(self) -> list[str]:
        return [t for step in self.steps for t in step]


def _residue_table(vocabulary: Vocabulary) -> tuple[np.ndarray, list[str]]:
    """Sorted unique residue masses and one token per mass (unmodified preferred, I -> L)."""
    best: dict[float, str] = {}
    for i in vocabulary.residue_indices:
        token = vocabulary.tokens[i]
        m = round(vocabulary.token_masses[i], 4)
        if token == "I":
            continue
        if m not in best or ("[" in best[m] and "[" not in token):
            best[m] = token
    masses = np.array(sorted(best))
    return masses, [best[m] for m in masses]


class SpectrumGraph:
    """The baseline sequencer for one vocabulary and configuration."""

    def __init__(self, vocabulary: Vocabulary = DEFAULT_VOCABULARY, config: BaselineConfig = BaselineConfig()):
        self.vocabulary = vocabulary
        self.config = config
        self.masses, self.tokens = _residue_table(vocabulary)
        pairs = [(a + b, i, j) for (i, a), (j, b) in itertools.combinations_with_replacement(enumerate(self.masses), 2)]
        pairs.sort()
        self.pair_masses = np.array([p[0] for p in pairs])
        self.pair_tokens = [(self.tokens[p[1]], self.tokens[p[2]]) for p in pairs]
        triples = sorted((a + b + c, i, j, k) for (i, a), (j, b), (k, c)
                         in itertools.combinations_with_replacement(enumerate(self.masses), 3)) \
            if config.triple_penalty is not None else []
        self.triple_masses = np.array([t[0] for t in triples])
        self.triple_tokens = [tuple(self.tokens[i] for i in t[1:]) for t in triples]

    def _nodes(self, spectrum: Spectrum) -> tuple[np.ndarray, np.ndarray, float]:
        """(prefix masses (n,), support (n,), total residue mass) of the merged graph nodes."""
        total = spectrum.neutral_mass - H2O_MASS
        mz, inten = spectrum.mz, spectrum.intensity
        if mz.size > self.config.n_peaks:
            top = np.argsort(-inten)[: self.config.n_peaks]
            mz, inten = mz[top], inten[top]
        # peak score: rank-free, square-root intensity relative to the spectrum's strongest peak
        score = np.sqrt(inten / inten.max()) if inten.size and inten.max() > 0 else np.zeros_like(inten)
        charges = range(1, max(1, min(spectrum.charge - 1, 2)) + 1)
        positions, support = [], []
        for z in charges:
            fragment = mz * z - z * PROTON_MASS          # neutral fragment mass
            positions += [fragment, total - (fragment - H2O_MASS)]
            support += [score, score]
        p, s = np.concatenate(positions), np.concatenate(support)
        inside = (p > self.masses[0] - self.config.tol_da) & (p < total - self.masses[0] + self.config.tol_da)
        p, s = p[inside], s[inside]
        order = np.argsort(p)
        p, s = p[order], s[order]
        if p.size:  # runs of readings closer than merge_da become one node at their support-weighted mean
            starts = np.flatnonzero(np.concatenate([[True], np.diff(p) > self.config.merge_da]))
            w = s + 1e-9
            p, s = np.add.reduceat(p * w, starts) / np.add.reduceat(w, starts), np.add.reduceat(s, starts)
        return np.concatenate([[0.0], p, [total]]), np.concatenate([[0.0], s, [0.0]]), total

    def _match(self, diffs: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Index into ``table`` of the entry nearest each diff, -1 when none within tol."""
        k = np.clip(np.searchsorted(table, diffs), 1, table.size - 1)
        left, right = table[k - 1], table[k]
        nearest = np.where(np.abs(diffs - left) <= np.abs(diffs - right), k - 1, k)
        ok = np.abs(diffs - table[nearest]) <= self.config.tol_da
        return np.where(ok, nearest, -1)

    def _edges(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All graph edges, sorted by (end node, start node): start (m,), end (m,), kind (m,)
        (1 single residue, 2 pair, 3 triple) and ``which`` (m,) index into the residue, pair or
        triple table. A node pair within a single-residue mass is never also a pair edge, nor a
        pair also a triple (as in the DP, fewer residues win at equal score)."""
        widest = self.triple_masses[-1] if self.triple_masses.size else self.pair_masses[-1]
        max_gap = widest + self.config.tol_da
        reach = np.searchsorted(pos, pos + max_gap, side="right") - np.arange(pos.size)   # nodes within max_gap
        width = max(1, int(reach.max()) if pos.size else 1)
        start = np.arange(pos.size)[:, None]
        end = start + np.arange(1, width + 1)[None, :]
        inside = end < pos.size
        start, end = np.broadcast_to(start, end.shape)[inside], end[inside]
        diffs = pos[end] - pos[start]
        near = diffs <= max_gap
        start, end, diffs = start[near], end[near], diffs[near]
        single, pair = self._match(diffs, self.masses), self._match(diffs, self.pair_masses)
        triple = self._match(diffs, self.triple_masses) if self.triple_masses.size else np.full(diffs.shape, -1)
        kind = np.where(single >= 0, 1, np.where(pair >= 0, 2, np.where(triple >= 0, 3, 0)))
        which = np.where(single >= 0, single, np.where(pair >= 0, pair, triple))
        keep = kind > 0
        start, end, kind, which = start[keep], end[keep], kind[keep], which[keep]
        order = np.lexsort((start, end))
        return start[order], end[order], kind[order], which[order]

    def best_path(self, spectrum: Spectrum) -> GraphPath | None:
        """The best source-to-sink path (None when the sink cannot be reached)."""
        pos, sup, _ = self._nodes(spectrum)
        n = pos.size
        starts, ends, kinds, whiches = self._edges(pos)
        penalty = {1: 0.0, 2: self.config.pair_penalty, 3: self.config.triple_penalty}
        # longest path over the nodes in mass order; the edges arrive sorted by (end, start), so
        # a plain loop visits each node's incoming edges after all of their start nodes are final.
        # Ties go to fewer residues, then to the lower start node.
        best = [-math.inf] * n
        best[0] = 0.0
        back, kind, which = [-1] * n, [0] * n, [0] * n
        support = sup.tolist()
        for i, j, k, w in zip(starts.tolist(), ends.tolist(), kinds.tolist(), whiches.tolist()):
            value = best[i] + support[j] - penalty[k]
            if value > best[j] or (value == best[j] and value > -math.inf and k < kind[j]):
                best[j], back[j], kind[j], which[j] = value, i, k, w
        if best[-1] == -math.inf:
            return None
        steps: list[tuple[str, ...]] = []
        node_support: list[float] = []
        inner: list[int] = []   # path nodes between source and sink, from the sink down
        j = n - 1
        top = max(sup.max(), 1e-9)
        while j > 0:
            step = ((self.tokens[which[j]],) if kind[j] == 1 else self.pair_tokens[which[j]] if kind[j] == 2
                    else self.triple_tokens[which[j]])
            steps.insert(0, step)
            end_score = 1.0 if j == n - 1 else sup[j] / top
            start_score = 1.0 if back[j] == 0 else sup[back[j]] / top
            node_support = [0.5 * (end_score + start_score)] * len(step) + node_support
            if j != n - 1:
                inner.append(j)
            j = back[j]
        score = float(np.mean(sup[inner] / top)) if inner else 0.0
        return GraphPath(steps, [float(pos[i]) for i in reversed(inner)], score, node_support)

    def sequence(self, spectrum: Spectrum) -> tuple[list[str], float, list[float]]:
        """(tokens, peptide score, per-residue scores) of the best path; ([], 0, []) if none.

        The peptide score is the mean support of the path's inner nodes relative to the best
        node in the spectrum; each residue gets the mean support of its two end nodes.
        """
        path = self.best_path(spectrum)
        if path is None:
            return [], 0.0, []
        return path.tokens, path.score, path.aa_scores


def run_baseline(spectra: Sequence[Spectrum], vocabulary: Vocabulary = DEFAULT_VOCABULARY,
                 config: BaselineConfig = BaselineConfig(), progress=None) -> list[PSM]:
    """One PSM per spectrum (empty tokens where the graph has no source-to-sink path)."""
    graph = SpectrumGraph(vocabulary, config)
    out = []
    for k, s in enumerate(spectra):
        tokens, score, aa = graph.sequence(s)
        out.append(PSM(s.index, tokens, score, aa, s.charge, s.precursor_mz, title=s.title,
                       retention_time_s=s.retention_time_s, vocabulary=vocabulary))
        if progress is not None:
            progress(k + 1)
    return out
