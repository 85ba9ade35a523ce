"""The peptide-spectrum match (PSM): one prediction for one spectrum.

Shape of casanovo's ``PepSpecMatch`` (Noble-Lab/casanovo ``casanovo/data/psm.py``): sequence,
spectrum id, peptide score, charge, calculated and observed m/z, per-residue scores; plus the
spectrum's title and retention time so that writers keep them (casanovo #497). Writers live in
``equipoise.peptide.mztab``; decoding returns PSMs and never holds a writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from equipoise.peptide.vocab import DEFAULT_VOCABULARY, Vocabulary, ppm_error


@dataclass
class PSM:
    """One peptide-spectrum match.

    Attributes
    ----------
    spectrum_index: 0-based position of the spectrum in its input file (mzTab ``index=K``).
    tokens: predicted peptide as vocabulary tokens, N- to C-terminus (empty: no prediction).
    score: peptide score in [0, 1] (higher is more confident; Casanovo subtracts 1 when the
        precursor mass is outside the tolerance, so scores may be negative).
    aa_scores: one score per token of ``tokens``.
    charge: precursor charge.
    exp_mz: observed precursor m/z (Th).
    title: the spectrum's TITLE (or mzML native id).
    retention_time_s: retention time in seconds, or None.
    calc_mz: m/z of the predicted peptide at ``charge`` (computed from ``tokens`` when None).
    """

    spectrum_index: int
    tokens: list[str]
    score: float
    aa_scores: list[float]
    charge: int
    exp_mz: float
    title: str = ""
    retention_time_s: float | None = None
    calc_mz: float | None = None
    vocabulary: Vocabulary = field(default=DEFAULT_VOCABULARY, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.aa_scores) != len(self.tokens):
            raise ValueError(f"spectrum {self.spectrum_index}: {len(self.aa_scores)} aa_scores for "
                             f"{len(self.tokens)} tokens")
        if self.calc_mz is None and self.tokens:
            self.calc_mz = self.vocabulary.precursor_mz(self.tokens, self.charge)

    @property
    def sequence(self) -> str:
        """The ProForma string of the prediction ('' when there is none)."""
        return self.vocabulary.to_proforma(self.tokens)

    @property
    def precursor_error_ppm(self) -> float | None:
        """(observed - calculated) precursor m/z in ppm, None without a prediction."""
        return None if self.calc_mz is None else ppm_error(self.exp_mz, self.calc_mz)


def psms_from_sequences(sequences: Sequence[str], exp_mz: Sequence[float], charges: Sequence[int],
                        scores: Sequence[float] | None = None,
                        vocabulary: Vocabulary = DEFAULT_VOCABULARY) -> list[PSM]:
    """PSMs for ProForma strings (one per spectrum, in order); aa_scores equal the peptide score."""
    out = []
    for i, (seq, mz, z) in enumerate(zip(sequences, exp_mz, charges, strict=True)):
        tokens = vocabulary.tokenize(seq) if seq else []
        s = 1.0 if scores is None else float(scores[i])
        out.append(PSM(i, tokens, s, [s] * len(tokens), int(z), float(mz), vocabulary=vocabulary))
    return out
