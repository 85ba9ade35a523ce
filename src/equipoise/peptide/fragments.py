"""Theoretical fragment-ion ladders as differentiable torch functions of residue masses.

A peptide of ``L`` residues (masses ``m_1 .. m_L`` in Da, N-terminal modification folded into
``m_1``, see :meth:`Vocabulary.residue_masses`) has ``L - 1`` cleavage sites. At site ``k``
(``k = 1 .. L-1``, between residues ``k`` and ``k+1``):

- ``b_k`` = (sum_{i<=k} m_i + z * proton) / z
- ``y_{L-k}`` = (sum_{i>k} m_i + H2O + z * proton) / z
- ``a_k`` = ``b_k`` - CO / z; neutral losses ``-H2O`` and ``-NH3`` of b and y.

(Standard peptide fragmentation nomenclature, Roepstorff & Fohlman 1984; the same ion
compositions as ``pyteomics.mass.std_ion_comp``.) Outputs are indexed by cleavage site, so that
``b[..., k-1]`` and ``y[..., k-1]`` are the complementary pair of site ``k``: ``y[..., j]`` is the
y ion of ``L - 1 - j`` residues.

Inputs may be padded: ``mask`` (..., L) is True on real residues (a prefix of each row); padding
masses are ignored, and an output site is valid only when both neighbouring residues are real.
Works for any float dtype and device; gradients flow to ``residue_masses`` (the model's expected
residue masses). :func:`padded_residue_masses` builds such padded inputs from lists of peptides;
:func:`immonium_mz` and :func:`internal_fragments` give the ions off the b/y ladders (numpy, for
synthetic spectra and annotation statistics; Papayannopoulos 1995, Mass Spectrom Rev 14:49).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from equipoise.peptide.vocab import CO_MASS, H2O_MASS, NH3_MASS, PROTON_MASS

#: ion type -> (series, mass added to the neutral b-type prefix or y-type suffix, Da)
ION_TYPES: dict[str, tuple[str, float]] = {
    "b": ("b", 0.0), "y": ("y", H2O_MASS), "a": ("b", -CO_MASS),
    "b-H2O": ("b", -H2O_MASS), "b-NH3": ("b", -NH3_MASS),
    "y-H2O": ("y", 0.0), "y-NH3": ("y", H2O_MASS - NH3_MASS),
}
#: the ion types of :data:`ION_TYPES` other than b and y: a ions and neutral losses
SECONDARY_IONS: tuple[str, ...] = tuple(t for t in ION_TYPES if t not in ("b", "y"))


def padded_residue_masses(rows: Sequence[Sequence[float]], dtype: torch.dtype = torch.float64,
                          device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) residue masses (Da, 0 on padding) and (N, L) bool mask of N peptides' residue-mass
    lists, L the longest: the padded inputs of :func:`fragment_mz`."""
    width = max((len(r) for r in rows), default=0)
    masses = torch.zeros(len(rows), width, dtype=dtype, device=device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        masses[i, :len(r)] = torch.tensor(r, dtype=dtype, device=device)
        mask[i, :len(r)] = True
    return masses, mask


def immonium_mz(residue_masses: np.ndarray) -> np.ndarray:
    """m/z (Th, 1+) of the immonium ion of each distinct residue mass (residue - CO + H+), ascending."""
    return np.unique(residue_masses) - CO_MASS + PROTON_MASS


def internal_fragments(residue_masses: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """b-type internal fragments of one peptide: every run of residues ``i .. j-1`` (0-based) of
    2..``max_length`` residues touching neither terminus (1 <= i, j <= L - 1), in order of ``i``
    then ``j``. Returns (first residue index (n,) int64, m/z 1+ (n,) Th = residue sum + H+)."""
    n = residue_masses.size
    pairs = [(i, j) for i in range(1, n - 2) for j in range(i + 2, min(i + max_length, n - 1) + 1)]
    starts = np.array([i for i, _ in pairs], dtype=np.int64)
    stops = np.array([j for _, j in pairs], dtype=np.int64)
    cumulative = np.concatenate([[0.0], np.cumsum(residue_masses)])
    return starts, cumulative[stops] - cumulative[starts] + PROTON_MASS


def prefix_suffix_masses(residue_masses: torch.Tensor, mask: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neutral prefix and suffix residue sums at every cleavage site.

    residue_masses: (..., L) Da. mask: (..., L) bool, True on real residues (default all).
    Returns ``(prefix, suffix, valid)``, each (..., L-1): ``prefix[..., k-1]`` = sum of the first
    k residues, ``suffix[..., k-1]`` = sum of the residues after site k, ``valid`` True where the
    site lies inside the peptide.
    """
    if mask is None:
        mask = torch.ones(residue_masses.shape, dtype=torch.bool, device=residue_masses.device)
    masses = residue_masses * mask.to(residue_masses.dtype)
    cumulative = torch.cumsum(masses, dim=-1)
    total = cumulative[..., -1:]
    prefix = cumulative[..., :-1]
    suffix = total - prefix
    valid = mask[..., 1:]
    return prefix, suffix, valid


def ion_labels(ion_types: tuple[str, ...] = ("b", "y"), charges: tuple[int, ...] = (1,)) -> list[str]:
    """Names of the rows of :func:`fragment_mz`, e.g. ``['b1+', 'y1+', 'b2+', 'y2+']``."""
    return [f"{ion}{z}+" for z in charges for ion in ion_types]


def fragment_mz(residue_masses: torch.Tensor, mask: torch.Tensor | None = None, *,
                ion_types: tuple[str, ...] = ("b", "y"), charges: tuple[int, ...] = (1,)
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """m/z of fragment ions at every cleavage site.

    residue_masses: (..., L) Da; mask: (..., L) bool or None. ion_types: keys of
    :data:`ION_TYPES`; charges: fragment charges.
    Returns ``(mz, valid)`` of shape (..., n_charges * n_ion_types, L-1): row order as
    :func:`ion_labels` (charge outer, ion type inner), column k-1 = cleavage site k.
    """
    unknown = [t for t in ion_types if t not in ION_TYPES]
    if unknown:
        raise ValueError(f"unknown ion types {unknown}; known: {list(ION_TYPES)}")
    prefix, suffix, valid = prefix_suffix_masses(residue_masses, mask)
    rows = []
    for z in charges:
        for ion in ion_types:
            series, offset = ION_TYPES[ion]
            neutral = (prefix if series == "b" else suffix) + offset
            rows.append((neutral + z * PROTON_MASS) / z)
    mz = torch.stack(rows, dim=-2)
    return mz, valid.unsqueeze(-2).expand(mz.shape)


def peptide_mz(residue_masses: torch.Tensor, charge: torch.Tensor, mask: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Precursor m/z of [M + zH]z+: residue_masses (..., L) Da, charge (...) -> (...) Th."""
    if mask is not None:
        residue_masses = residue_masses * mask.to(residue_masses.dtype)
    neutral = residue_masses.sum(dim=-1) + H2O_MASS
    charge = charge.to(residue_masses.dtype)
    return (neutral + charge * PROTON_MASS) / charge
