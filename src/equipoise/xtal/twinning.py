"""Merohedral twinning diagnostics: intensity statistics and twin laws with estimated fractions.

- L-test (Padilla & Yeates 2003, Acta D59, 1124): L = (I1 - I2)/(I1 + I2) for reflections whose
  indices differ by (+-2, 0, 0), (0, +-2, 0), (0, 0, +-2) (local pairs, so anisotropy and
  pseudo-translation cancel); <|L|> = 0.5 untwinned, 0.375 perfectly twinned.
- <I^2>/<I>^2 of acentric reflections per resolution shell: 2.0 untwinned, 1.5 perfect twin.
- Twin laws of the lattice (gemmi ``find_twin_laws``); for each, the H-test (Yeates 1988,
  Methods Enzymol. 276, 344): H = |I1 - I2|/(I1 + I2) over twin-related acentric pairs,
  alpha = 1/2 - <H>.

Intensities are F_obs^2 (French–Wilson amplitudes squared when the file had intensities).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np

#: <|L|> below this, or a twin law with alpha above ``ALPHA_FLAG``, is reported as twinning
L_FLAG = 0.44
ALPHA_FLAG = 0.1


@dataclass
class TwinReport:
    """Twinning statistics. laws: [{"law": "-h,k,-l", "alpha_h": 0.34, "pairs": n}]."""

    mean_abs_l: float
    mean_l2: float
    i2_ratio: float
    laws: list[dict] = field(default_factory=list)
    twinned: bool = False

    def summary(self) -> str:
        """Readable verdict for the log."""
        laws = "; ".join(f"{t['law']} alpha(H) = {t['alpha_h']:.3f} ({t['pairs']} pairs)" for t in self.laws) or "none"
        verdict = "TWINNING LIKELY" if self.twinned else "no sign of twinning"
        return (f"twinning: {verdict}: <|L|> = {self.mean_abs_l:.3f} (0.500 untwinned, 0.375 perfect), "
                f"<L^2> = {self.mean_l2:.3f} (0.333 / 0.200), <I^2>/<I>^2 = {self.i2_ratio:.3f} "
                f"(2.0 / 1.5); twin laws: {laws}")

    def as_dict(self) -> dict:
        return {"mean_abs_l": self.mean_abs_l, "mean_l2": self.mean_l2, "i2_ratio": self.i2_ratio,
                "laws": self.laws, "twinned": self.twinned}


def twin_statistics(hkl: np.ndarray, intensity: np.ndarray, d: np.ndarray, centric: np.ndarray,
                    cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup, *, n_shells: int = 10) -> TwinReport:
    """Statistics of (m,) intensities at (m, 3) unique hkl; see module doc."""
    ops = spacegroup.operations()
    asu = gemmi.ReciprocalAsu(spacegroup)
    index = {tuple(h): i for i, h in enumerate(hkl.tolist())}

    def lookup(h):
        hh, _ = asu.to_asu(list(map(int, h)), ops)
        return index.get(tuple(hh))

    acentric = ~centric
    # L-test over local pairs of acentric reflections
    ls = []
    for i in np.flatnonzero(acentric):
        for step in ((2, 0, 0), (0, 2, 0), (0, 0, 2)):
            j = lookup(hkl[i] + np.array(step))
            if j is not None and acentric[j]:
                s = intensity[i] + intensity[j]
                if s > 0:
                    ls.append((intensity[i] - intensity[j]) / s)
    ls_arr = np.clip(np.array(ls) if ls else np.array([np.nan]), -1, 1)
    # <I^2>/<I>^2 per shell, averaged
    order = np.argsort(1.0 / d ** 2)
    shell = np.empty(len(d), dtype=np.int64)
    shell[order] = (np.arange(len(d)) * n_shells) // max(len(d), 1)
    ratios = []
    for s in range(n_shells):
        sel = (shell == s) & acentric
        if sel.sum() > 20:
            i_s = intensity[sel]
            ratios.append(np.mean(i_s ** 2) / np.mean(i_s) ** 2)
    laws = []
    for op in gemmi.find_twin_laws(cell, spacegroup, 3.0, False):
        hs = []
        for i in np.flatnonzero(acentric):
            j = lookup(op.apply_to_hkl(list(map(int, hkl[i]))))
            if j is not None and j != i and acentric[j]:
                s = intensity[i] + intensity[j]
                if s > 0 and intensity[i] > 0 and intensity[j] > 0:
                    hs.append(abs(intensity[i] - intensity[j]) / s)
        if hs:
            laws.append({"law": op.as_hkl().triplet(), "alpha_h": float(max(0.0, 0.5 - np.mean(hs))),
                         "pairs": len(hs) // 2})
    mean_abs_l = float(np.nanmean(np.abs(ls_arr)))
    twinned = mean_abs_l < L_FLAG or any(t["alpha_h"] > ALPHA_FLAG for t in laws)
    return TwinReport(mean_abs_l, float(np.nanmean(ls_arr ** 2)),
                      float(np.mean(ratios)) if ratios else float("nan"), laws, twinned)
