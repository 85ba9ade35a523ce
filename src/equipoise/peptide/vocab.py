"""The one vocabulary and mass table of ``equipoise.peptide``.

Data (io, synth), the model, the loss terms, decoding and the metrics all take a
:class:`Vocabulary`; none keeps its own mass list (the seed project's datasets and losses
disagreed on indices, see ../shared/DESIGN.md). Token 0 is padding, token 1 the stop token, then
the residues as ProForma strings: the 20 amino acids with cysteine carbamidomethylated (fixed
modification, so ``C`` reads as ``C[Carbamidomethyl]``), the variable modifications
``M[Oxidation]``, ``N[Deamidated]``, ``Q[Deamidated]`` and the N-terminal modifications
``[Acetyl]-``, ``[Carbamyl]-``, ``[Ammonia-loss]-`` and their combination ``[+25.979265]-``
(carbamyl and NH3 loss; Casanovo writes it ``[+25.980265]-`` with a 1 mDa slip in the mass,
43.005814 - 17.026549 = 25.979265, and we read that spelling as an alias). This is Casanovo's
residue set (Noble-Lab/casanovo ``config.yaml``, ``residues``), with the token layout of
depthcharge's ``PeptideTokenizer`` (wfondrie/depthcharge ``depthcharge/tokenizers/peptides.py``).

Masses are monoisotopic, in Da, from the elemental compositions of Unimod (tests compare each
with pyteomics to 1e-6 Da). An N-terminal modification token is written first and carries only its
mass delta; :meth:`Vocabulary.residue_masses` folds it into the first residue so that fragment
ladders (``equipoise.peptide.fragments``) stay correct.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from equipoise.errors import InputError

if TYPE_CHECKING:  # torch is imported where tensors are made, so the CLI stays light
    import torch

#: monoisotopic masses (Da), pyteomics.mass.nist_mass / Unimod compositions
PROTON_MASS = 1.00727646677
H2O_MASS = 18.0105646837
NH3_MASS = 17.02654910101
CO_MASS = 27.99491461956
#: 13C - 12C, the spacing of isotope peaks (Da)
C13_SPACING = 1.003354835

#: unmodified amino-acid residue masses (Da)
AMINO_ACID_MASSES: dict[str, float] = {
    "G": 57.02146372057, "A": 71.03711378471, "S": 87.03202840427, "P": 97.05276384885,
    "V": 99.06841391299, "T": 101.04767846841, "C": 103.00918478471, "L": 113.08406397713,
    "I": 113.08406397713, "N": 114.04292744114, "D": 115.02694302383, "Q": 128.05857750528,
    "K": 128.09496301400, "E": 129.04259308797, "M": 131.04048491299, "H": 137.05891185845,
    "F": 147.06841391299, "R": 156.10111102360, "Y": 163.06332853255, "W": 186.07931294986,
}

#: Unimod name -> mass delta (Da): Carbamidomethyl H3C2NO, Oxidation O, Deamidated H-1N-1O,
#: Acetyl H2C2O, Carbamyl HCNO, Ammonia-loss H-3N-1
MODIFICATION_MASSES: dict[str, float] = {
    "Carbamidomethyl": 57.02146372057, "Oxidation": 15.99491461956, "Deamidated": 0.98401558269,
    "Acetyl": 42.0105646837, "Carbamyl": 43.00581365643, "Ammonia-loss": -17.02654910101,
}

PAD_TOKEN = "<pad>"
STOP_TOKEN = "<stop>"

#: Casanovo's residue tokens in our index order (after padding and stop)
RESIDUE_TOKENS: tuple[str, ...] = (
    "G", "A", "S", "P", "V", "T", "C[Carbamidomethyl]", "L", "I", "N", "D", "Q", "K", "E", "M",
    "H", "F", "R", "Y", "W", "M[Oxidation]", "N[Deamidated]", "Q[Deamidated]",
    "[Acetyl]-", "[Carbamyl]-", "[Ammonia-loss]-", "[+25.979265]-",
)

#: other spellings users' files carry -> our token (Casanovo <= 3 mass-delta notation, ProForma
#: mass deltas, the combination written as two ProForma N-terminal tags)
ALIASES: dict[str, str] = {
    "C": "C[Carbamidomethyl]", "C+57.021": "C[Carbamidomethyl]", "C[+57.021]": "C[Carbamidomethyl]",
    "C[UNIMOD:4]": "C[Carbamidomethyl]",
    "M+15.995": "M[Oxidation]", "M[+15.995]": "M[Oxidation]", "M[UNIMOD:35]": "M[Oxidation]",
    "N+0.984": "N[Deamidated]", "N[+0.984]": "N[Deamidated]", "N[UNIMOD:7]": "N[Deamidated]",
    "Q+0.984": "Q[Deamidated]", "Q[+0.984]": "Q[Deamidated]", "Q[UNIMOD:7]": "Q[Deamidated]",
    "+42.011": "[Acetyl]-", "[+42.011]-": "[Acetyl]-", "[UNIMOD:1]-": "[Acetyl]-",
    "+43.006": "[Carbamyl]-", "[+43.006]-": "[Carbamyl]-", "[UNIMOD:5]-": "[Carbamyl]-",
    "-17.027": "[Ammonia-loss]-", "[-17.027]-": "[Ammonia-loss]-", "[UNIMOD:385]-": "[Ammonia-loss]-",
    "+43.006-17.027": "[+25.979265]-", "[+25.980265]-": "[+25.979265]-", "[+25.979]-": "[+25.979265]-",
    "[Carbamyl][Ammonia-loss]-": "[+25.979265]-", "[Ammonia-loss][Carbamyl]-": "[+25.979265]-",
}

# one token: an N-terminal tag (ProForma "[..]-" possibly several, or Casanovo's leading +/-mass),
# or a residue letter with an optional [..] tag or +mass suffix
_TOKEN_RE = re.compile(r"(?:\[[^\]]*\])+-|^[+-]\d+\.\d+(?:[+-]\d+\.\d+)?|[A-Z](?:\[[^\]]*\]|[+-]\d+\.\d+)?")


def _token_mass(token: str) -> float:
    if token.endswith("-"):  # N-terminal modification
        tags = re.findall(r"\[([^\]]*)\]", token)
        return sum(MODIFICATION_MASSES[t] if t in MODIFICATION_MASSES else float(t) for t in tags)
    base = AMINO_ACID_MASSES[token[0]]
    tag = token[2:-1] if len(token) > 1 else None
    return base if tag is None else base + MODIFICATION_MASSES[tag]


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Tokens and their masses; index 0 padding, 1 stop, then ``residues`` in order.

    Parameters
    ----------
    residues: residue tokens as ProForma strings (default Casanovo's set, :data:`RESIDUE_TOKENS`).
        N-terminal modifications end in ``-``.
    aliases: other spellings accepted by :meth:`tokenize`, mapped to tokens of ``residues``.
    """

    residues: tuple[str, ...] = RESIDUE_TOKENS
    aliases: dict[str, str] = field(default_factory=lambda: dict(ALIASES))

    def __post_init__(self) -> None:
        if len(set(self.residues)) != len(self.residues):
            raise InputError("duplicate residue tokens in the vocabulary", field="residues")
        for token in self.residues:
            try:
                _token_mass(token)
            except (KeyError, ValueError, IndexError):
                raise InputError(f"residue token {token!r} has no known mass (expected an amino-acid "
                                 f"letter with an optional [{'|'.join(MODIFICATION_MASSES)}] tag, or "
                                 "an N-terminal tag ending in '-')", field="residues") from None
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    # ----------------------------------------------------------------- tokens and indices
    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens, index order: ``(<pad>, <stop>, *residues)``."""
        return (PAD_TOKEN, STOP_TOKEN, *self.residues)

    pad_index: int = field(default=0, init=False)
    stop_index: int = field(default=1, init=False)

    def __len__(self) -> int:
        return len(self.residues) + 2

    def index(self, token: str) -> int:
        """Index of one token (aliases accepted); KeyError if unknown."""
        return self._index[self.aliases.get(token, token)]  # type: ignore[attr-defined]

    @property
    def n_terminal_indices(self) -> tuple[int, ...]:
        """Indices of the N-terminal modification tokens (allowed only in first position)."""
        return tuple(i for i, t in enumerate(self.tokens) if t.endswith("-"))

    @property
    def residue_indices(self) -> tuple[int, ...]:
        """Indices of the amino-acid tokens (modified or not), not N-terminal tags."""
        return tuple(i for i, t in enumerate(self.tokens) if i > 1 and not t.endswith("-"))

    def tokenize(self, sequence: str, *, where: str | None = None) -> list[str]:
        """Split a ProForma (or Casanovo mass-delta) peptide into tokens of this vocabulary.

        ``where`` names the file/spectrum for the error message. Raises InputError on an unknown
        modification or residue.
        """
        text = sequence.strip()
        tokens: list[str] = []
        pos = 0
        for match in _TOKEN_RE.finditer(text):
            if match.start() != pos:
                break
            raw = match.group(0)
            token = self.aliases.get(raw, raw)
            if token not in self._index or token in (PAD_TOKEN, STOP_TOKEN):  # type: ignore[attr-defined]
                raise InputError(f"unknown residue or modification {raw!r} in peptide {sequence!r} "
                                 f"(known: {', '.join(self.residues)})", path=where, field="SEQ")
            if token.endswith("-") and tokens:
                raise InputError(f"N-terminal modification {raw!r} not at the N-terminus of "
                                 f"{sequence!r}", path=where, field="SEQ")
            tokens.append(token)
            pos = match.end()
        if pos != len(text) or not tokens:
            raise InputError(f"cannot read peptide {sequence!r} at character {pos + 1} (expected "
                             "ProForma such as [Acetyl]-PEPC[Carbamidomethyl]M[Oxidation]K)",
                             path=where, field="SEQ")
        if all(t.endswith("-") for t in tokens):
            raise InputError(f"peptide {sequence!r} has no residues", path=where, field="SEQ")
        return tokens

    def encode(self, sequence: str | Sequence[str], *, stop: bool = False) -> list[int]:
        """Token indices of a peptide (a ProForma string or a token list), N- to C-terminus;
        with ``stop`` the stop index is appended."""
        tokens = self.tokenize(sequence) if isinstance(sequence, str) else list(sequence)
        indices = [self.index(t) for t in tokens]
        return indices + [self.stop_index] if stop else indices

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Tokens of ``indices``, stopping at the first stop token and dropping padding."""
        out: list[str] = []
        for i in indices:
            i = int(i)
            if i == self.stop_index:
                break
            if i != self.pad_index:
                out.append(self.tokens[i])
        return out

    @staticmethod
    def to_proforma(tokens: Sequence[str]) -> str:
        """ProForma string of a token list (N-terminal tags already end in '-')."""
        return "".join(tokens)

    # ----------------------------------------------------------------- masses
    @property
    def token_masses(self) -> tuple[float, ...]:
        """Mass (Da) of every token in index order; padding and stop are 0."""
        return (0.0, 0.0, *(_token_mass(t) for t in self.residues))

    def mass_tensor(self, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """(n_tokens,) tensor of :attr:`token_masses` in Da, on ``device`` with ``dtype``."""
        import torch

        return torch.tensor(self.token_masses, dtype=dtype, device=device)

    def residue_masses(self, tokens: Sequence[str]) -> list[float]:
        """Masses (Da) of the residues of a peptide, N-terminal modification folded into the first
        residue: one value per amino acid, the input of the fragment ladder."""
        masses = [_token_mass(self.aliases.get(t, t)) for t in tokens]
        if len(masses) > 1 and tokens[0].endswith("-"):
            masses = [masses[0] + masses[1], *masses[2:]]
        return masses

    def neutral_mass(self, sequence: str | Sequence[str]) -> float:
        """Monoisotopic neutral mass M (Da) of a peptide: residues + H2O."""
        tokens = self.tokenize(sequence) if isinstance(sequence, str) else sequence
        return sum(_token_mass(self.aliases.get(t, t)) for t in tokens) + H2O_MASS

    def precursor_mz(self, sequence: str | Sequence[str], charge: int) -> float:
        """m/z of the [M + zH]z+ precursor ion."""
        return mz_from_neutral_mass(self.neutral_mass(sequence), charge)

    def strip_isobaric(self, tokens: Sequence[str]) -> list[str]:
        """Tokens with I replaced by L (one mass; metrics treat them as equal)."""
        return ["L" if t == "I" else t for t in tokens]


def mz_from_neutral_mass(neutral_mass: float, charge: int) -> float:
    """m/z (Th) of [M + zH]z+ from the neutral mass M (Da)."""
    return (neutral_mass + charge * PROTON_MASS) / charge


def neutral_mass_from_mz(mz: float, charge: int) -> float:
    """Neutral mass M (Da) of an [M + zH]z+ ion of m/z ``mz``."""
    return mz * charge - charge * PROTON_MASS


def ppm_error(observed: float, calculated: float) -> float:
    """(observed - calculated) / calculated in parts per million."""
    return (observed - calculated) / calculated * 1e6


#: the vocabulary every command uses unless told otherwise
DEFAULT_VOCABULARY = Vocabulary()
