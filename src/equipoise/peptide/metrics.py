"""De novo sequencing metrics, as Casanovo defines them (pure numpy).

Definitions follow Noble-Lab/casanovo ``casanovo/denovo/evaluate.py`` (after DeepNovo, Tran et al.
2017): two peptides are walked from the N-terminus; a residue pair is aligned when the cumulative
prefix masses agree within ``cum_tol_da`` (0.5 Da) and it *matches* when the two residue masses
also agree within ``aa_tol_da`` (0.1 Da); when the cumulative masses disagree the lighter side
advances. If the peptides do not match completely, a second pass walks from the C-terminus down
to the first mismatch. Amino-acid precision = matched / predicted residues, recall = matched /
true residues (a spectrum without a prediction contributes 0 predicted residues). Peptide recall
= exactly identical sequences (I = L) / spectra. The precision–coverage curve ranks predictions
by peptide score; its area is the trapezoidal integral over coverage. Every metric is also given
by true peptide length (residues of the *label*, N-terminal modification not counted; never
told to the model).

Token masses come from the vocabulary; N-terminal modification tokens count as a token with
their mass delta, as in Casanovo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from equipoise.peptide.vocab import DEFAULT_VOCABULARY, Vocabulary


def _masses(tokens: Sequence[str], vocabulary: Vocabulary) -> list[float]:
    table = vocabulary.token_masses
    return [table[vocabulary.index(t)] for t in tokens]


def _walk(m1: list[float], m2: list[float], matches: np.ndarray, cum_tol_da: float, aa_tol_da: float,
          stop: int, reverse: bool) -> None:
    """One greedy pass (prefix, or suffix when ``reverse``) marking ``matches[max(i1, i2)]``."""
    n1, n2 = len(m1), len(m2)
    i1, i2 = (n1 - 1, n2 - 1) if reverse else (0, 0)
    step = -1 if reverse else 1
    cum1 = cum2 = 0.0
    inside = (lambda a, b: a >= stop and b >= stop) if reverse else (lambda a, b: a < n1 and b < n2)
    while inside(i1, i2):
        a, b = m1[i1], m2[i2]
        if abs((cum1 + a) - (cum2 + b)) < cum_tol_da:
            matches[max(i1, i2)] = abs(a - b) < aa_tol_da
            i1, i2, cum1, cum2 = i1 + step, i2 + step, cum1 + a, cum2 + b
        elif cum2 + b > cum1 + a:
            i1, cum1 = i1 + step, cum1 + a
        else:
            i2, cum2 = i2 + step, cum2 + b


def aa_matches(truth: Sequence[str], predicted: Sequence[str] | None, *, cum_tol_da: float = 0.5,
               aa_tol_da: float = 0.1, vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> np.ndarray:
    """(max(len(truth), len(predicted)),) bool: which aligned residue pairs match (prefix pass,
    then suffix pass down to the first prefix mismatch). No prediction: all False."""
    if not predicted:
        return np.zeros(len(truth), dtype=bool)
    m1, m2 = _masses(truth, vocabulary), _masses(predicted, vocabulary)
    matches = np.zeros(max(len(m1), len(m2)), dtype=bool)
    _walk(m1, m2, matches, cum_tol_da, aa_tol_da, 0, reverse=False)
    if not matches.all():
        first_miss = int(np.argmin(matches))
        _walk(m1, m2, matches, cum_tol_da, aa_tol_da, first_miss, reverse=True)
    return matches


def same_peptide(truth: Sequence[str], predicted: Sequence[str] | None,
                 vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> bool:
    """Exact sequence identity with I and L equal."""
    return predicted is not None and vocabulary.strip_isobaric(truth) == vocabulary.strip_isobaric(predicted)


@dataclass
class SequencingMetrics:
    """Metrics of one set of predictions (or one length bin).

    n_spectra: labelled spectra counted; n_predicted: those with a prediction.
    aa_precision, aa_recall, peptide_recall, peptide_precision (correct / predicted),
    auc: area under the precision–coverage curve, precursor_fraction: fraction of predictions
    whose precursor m/z lies within the tolerance.
    """

    n_spectra: int
    n_predicted: int
    aa_precision: float
    aa_recall: float
    peptide_recall: float
    peptide_precision: float
    auc: float
    precursor_fraction: float
    by_length: dict[int, SequencingMetrics] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dict (JSON-ready), length bins keyed by str(length)."""
        out = {k: v for k, v in self.__dict__.items() if k != "by_length"}
        out["by_length"] = {str(k): v.as_dict() for k, v in sorted(self.by_length.items())}
        return out

    def summary(self) -> str:
        """A short table for the terminal."""
        lines = [f"spectra {self.n_spectra}, predicted {self.n_predicted}",
                 f"AA precision {self.aa_precision:.3f}  AA recall {self.aa_recall:.3f}  "
                 f"peptide recall {self.peptide_recall:.3f}  AUC {self.auc:.3f}  "
                 f"within precursor tol {self.precursor_fraction:.3f}",
                 "length  n   AA prec  AA rec  pep rec"]
        for length, m in sorted(self.by_length.items()):
            lines.append(f"{length:6d} {m.n_spectra:3d}  {m.aa_precision:7.3f} {m.aa_recall:7.3f} {m.peptide_recall:8.3f}")
        return "\n".join(lines)


def precision_coverage(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision–coverage curve over predictions ranked by descending score.

    scores, correct: (n,) over all labelled spectra (spectra without a prediction: score -inf,
    correct False; they are ranked last and still count in coverage). Returns
    (coverage (n,), precision (n,), area by the trapezoid rule with the curve's first point
    extended to coverage 0).
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0), np.zeros(0), 0.0
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=float)[order])
    ranks = np.arange(1, n + 1)
    coverage, precision = ranks / n, hits / ranks
    area = float(np.trapezoid(np.r_[precision[0], precision], np.r_[0.0, coverage]))
    return coverage, precision, area


def top_scored(predictions: Sequence[Sequence[str] | None], scores: Sequence[float], k: int
               ) -> list[Sequence[str] | None]:
    """``predictions`` with all but the ``k`` highest-scoring ones replaced by None (ties broken by
    position), to compare methods at equal coverage: e.g. a model that predicts every spectrum
    against a baseline that abstains on some, at the baseline's number of predictions."""
    if not 0 <= k <= len(predictions) or len(scores) != len(predictions):
        raise ValueError(f"k = {k} of {len(predictions)} predictions with {len(scores)} scores")
    s = np.array([sc if p else -np.inf for p, sc in zip(predictions, scores)], dtype=float)
    keep = set(np.argsort(-s, kind="stable")[:k].tolist())
    return [p if i in keep else None for i, p in enumerate(predictions)]


def evaluate_predictions(truths: Sequence[Sequence[str]], predictions: Sequence[Sequence[str] | None],
                         scores: Sequence[float] | None = None,
                         precursor_ok: Sequence[bool] | None = None, *,
                         cum_tol_da: float = 0.5, aa_tol_da: float = 0.1,
                         vocabulary: Vocabulary = DEFAULT_VOCABULARY, by_length: bool = True) -> SequencingMetrics:
    """Casanovo's metrics of ``predictions`` (token lists, None/empty = no prediction) against
    ``truths``, aligned by spectrum. ``scores`` rank the precision–coverage curve (default all
    equal); ``precursor_ok`` flags predictions within the precursor tolerance."""
    n = len(truths)
    if len(predictions) != n:
        raise ValueError(f"{len(predictions)} predictions for {n} labelled spectra")
    has = np.array([bool(p) for p in predictions], dtype=bool)
    s = np.zeros(n) if scores is None else np.asarray(scores, dtype=float)
    s = np.where(has, s, -np.inf)
    n_match = np.array([aa_matches(t, p, cum_tol_da=cum_tol_da, aa_tol_da=aa_tol_da,
                                   vocabulary=vocabulary).sum() for t, p in zip(truths, predictions)])
    n_true = np.array([len(t) for t in truths])
    n_pred = np.array([len(p) if p else 0 for p in predictions])
    correct = np.array([same_peptide(t, p or None, vocabulary) for t, p in zip(truths, predictions)], dtype=bool)
    ok = np.zeros(n, dtype=bool) if precursor_ok is None else np.asarray(precursor_ok, dtype=bool)
    lengths = np.array([sum(1 for tok in t if not tok.endswith("-")) for t in truths])
    return _aggregate(np.arange(n), n_match, n_true, n_pred, correct, has, s, ok,
                      lengths if by_length else None)


def _aggregate(rows: np.ndarray, n_match: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray,
               correct: np.ndarray, has: np.ndarray, scores: np.ndarray, ok: np.ndarray,
               lengths: np.ndarray | None) -> SequencingMetrics:
    """Metrics over ``rows``; with ``lengths`` (residues of each label) also per length."""
    def ratio(a: float, b: float) -> float:
        return float(a / b) if b else 0.0

    m, t, p, c, h = n_match[rows], n_true[rows], n_pred[rows], correct[rows], has[rows]
    _, _, area = precision_coverage(scores[rows], c)
    result = SequencingMetrics(
        n_spectra=len(rows), n_predicted=int(h.sum()), aa_precision=ratio(m.sum(), p.sum()),
        aa_recall=ratio(m.sum(), t.sum()), peptide_recall=ratio(c.sum(), len(rows)),
        peptide_precision=ratio(c.sum(), h.sum()), auc=area,
        precursor_fraction=ratio((ok[rows] & h).sum(), h.sum()))
    if lengths is not None:
        for length in np.unique(lengths[rows]):
            sel = rows[lengths[rows] == length]
            result.by_length[int(length)] = _aggregate(sel, n_match, n_true, n_pred, correct, has, scores,
                                                       ok, None)
    return result
