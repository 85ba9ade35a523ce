"""Merohedral twinning diagnostics: intensity statistics, twin laws, estimated twin fractions.

A merohedral (or pseudo-merohedral) twin superposes two lattices exactly (or nearly), so every
measured intensity is I(h) = (1 - alpha) I_a(h) + alpha I_a(T h) for a twin law T and a twin
fraction alpha. Averaging two independent intensities narrows their distribution; the tests:

- acentric <I^2>/<I>^2 with I normalised per resolution shell (the fourth moment of E): 2.0 for
  untwinned data (Wilson 1949), 1.5 for a perfect twin (Stanley 1972, J. Appl. Cryst. 5, 191),
  2 - 2 alpha (1 - alpha) for fraction alpha (the mean of the squared mixture of two independent
  exponentials); the measurement variance is subtracted from <I^2>;
- L-test (Padilla & Yeates 2003, Acta Cryst. D59, 1124): L = (I1 - I2)/(I1 + I2) for pairs of
  acentric reflections whose indices differ by (2, 0, 0), (0, 2, 0) or (0, 0, 2) (local pairs:
  their expected intensities are nearly equal, so anisotropy, a wrong falloff model and
  translational NCS with half-cell shifts matter little); untwinned |L| is uniform on [0, 1]
  (<|L|> = 1/2, <L^2> = 1/3), a perfect twin gives <|L|> = 3/8, <L^2> = 1/5;
- for each twin law of the lattice (gemmi ``find_twin_laws``: coset representatives of the
  lattice's point group over the space group's, merohedral when the law keeps the metric, else
  pseudo-merohedral), over acentric twin-related pairs: the H-test (Yeates 1997, Methods
  Enzymol. 276, 344): H = |I1 - I2|/(I1 + I2) is uniform on [0, 1 - 2 alpha], so
  alpha = 1/2 - <H>; and the Britton test (Britton 1972, Acta Cryst. A28, 296; Fisher & Sweet
  1980, Acta Cryst. A36, 755): the detwinned J1 = ((1 - alpha) I1 - alpha I2)/(1 - 2 alpha) is
  negative for a fraction (beta - alpha_0)/(1 - 2 alpha_0) of the pair members at trial
  fraction beta > alpha_0; the line through its 5-35 % part is extrapolated to zero (the
  noisy weakest pairs, the foot of Britton's plot, are left out).

Reflections that a twin law maps onto themselves (for -h,k,-l in P 43 the 0kl and h0l planes)
keep the untwinned distribution at any twin fraction, so they are left out of the L-test and
the moments (measured on a synthetic perfect twin in P 43 at 2.2 Å, 14 % of the acentric
reflections: with them <|L|> is 0.403 and <I^2>/<I>^2 1.57, without them 0.387 and 1.48).
Only resolution shells whose mean I/sigma(I) is at least ``MIN_SHELL_I_OVER_SIGMA`` (and all
shells at lower resolution) enter the statistics: noise pulls the pair tests towards
"untwinned". Pairs (L-test, H-test, Britton) are kept when I1 + I2 >= ``MIN_PAIR_SIGNAL``
sigma(I1 + I2): for two independent acentric intensities, twinned or not, the share
I1/(I1 + I2) is independent of the sum I1 + I2, so a cut on the sum selects no distribution
(a cut on each I/sigma would: I/sigma >= 1 and >= 3 moved 1A0F's <|L|> from 0.500 to 0.480
and 0.451).
Intensities are the file's when it had them (``Reflections.i_obs``, before French–Wilson), else
F^2 with sigma 2 F sigma_F.

For data that look twinned, ``add_twin_model`` fits the strongest law's fraction to a model's
amplitudes (``fit_twin_fraction``) and reports R-factors with and without the twin model; the
model itself is not refined against twinned data there. Twin refinement (``refine --twin``) is
``twin_model.py``; ``choose_twin`` picks its laws and starting fractions from the statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import gemmi
import numpy as np
import torch

from equipoise.errors import InputError
from equipoise.xtal.reflections import Reflections, equal_count_shells
from equipoise.xtal.scaling import bin_scale
from equipoise.xtal.targets import r_factor

#: <|L|> below this is reported as twinning (untwinned 0.5, a perfect twin 0.375)
L_FLAG = 0.44
#: a twin law whose H-test and Britton fractions both exceed this is reported as twinning
ALPHA_FLAG = 0.1
#: pairs with a lower (I1 + I2)/sigma(I1 + I2) are left out of the pair tests
MIN_PAIR_SIGNAL = 3.0
#: shells with a lower mean I/sigma(I), and all beyond them, are left out
MIN_SHELL_I_OVER_SIGMA = 3.0
#: index steps of the L-test's local pairs (even, against half-cell translational NCS)
L_STEPS = ((2, 0, 0), (0, 2, 0), (0, 0, 2))
#: part of Britton's plot (fraction of negative detwinned intensities) fitted by a line
BRITTON_RANGE = (0.05, 0.35)


@dataclass
class TwinLaw:
    """One twin law with its estimated fractions.

    law: the law on Miller indices (``"-h,k,-l"``); kind: ``"merohedral"`` or
    ``"pseudo-merohedral"``; rotation: the (3, 3) integer matrix R of h' = h R;
    metric_deviation: max |R G* R^T - G*| / max |G*| of the reciprocal metric under the law
    (0 for merohedral); n_pairs: acentric twin-related pairs used; alpha_h: H-test fraction;
    alpha_britton: Britton fraction; mean_h: <H>.
    """

    law: str
    kind: str
    rotation: list[list[int]]
    metric_deviation: float
    n_pairs: int
    alpha_h: float
    alpha_britton: float
    mean_h: float


@dataclass
class TwinModelFit:
    """R-factors of a model with a twin model: law, fitted fraction, R with and without it.

    alpha: the twin fraction that fits the working set best; r_work, r_free: with the twin
    model; r_work_untwinned, r_free_untwinned: the same scaling without it (alpha = 0);
    n_missing_mates: reflections whose twin mate is not measured (their own |F_model| stands in).
    """

    law: str
    alpha: float
    r_work: float
    r_free: float
    r_work_untwinned: float
    r_free_untwinned: float
    n_missing_mates: int

    def summary(self) -> str:
        """One line for the log."""
        return (f"with a twin model (law {self.law}, fraction {self.alpha:.3f} fitted to the working set, "
                f"bin scales refitted): R-work {self.r_work:.4f} R-free {self.r_free:.4f} (without: "
                f"{self.r_work_untwinned:.4f} / {self.r_free_untwinned:.4f}); the model itself is not "
                "refined against twinned data")


@dataclass
class TwinningSummary:
    """Twinning statistics of one data set (see the module docstring for every number).

    source: ``"intensities"`` or ``"F^2"``; d_max, d_min: resolution range used (Å);
    n_acentric: acentric reflections used; mean_abs_l, mean_l2, n_l_pairs: L-test;
    i2_ratio: acentric <I^2>/<I>^2; laws: one ``TwinLaw`` per twin law (none for a lattice
    without twin laws); twinned: the verdict; reason: why; twin_model: R-factors of a model
    with the strongest law's fitted fraction (``add_twin_model``), when measured.
    """

    source: str
    d_max: float
    d_min: float
    n_acentric: int
    mean_abs_l: float
    mean_l2: float
    n_l_pairs: int
    i2_ratio: float
    laws: list[TwinLaw] = field(default_factory=list)
    twinned: bool = False
    reason: str = ""
    twin_model: TwinModelFit | None = None

    @property
    def strongest(self) -> TwinLaw | None:
        """The twin law with the largest H-test fraction, or None."""
        return max(self.laws, key=lambda t: t.alpha_h) if self.laws else None

    def summary(self) -> str:
        """One line with every statistic, for the log."""
        laws = "; ".join(f"{t.law} ({t.kind}) alpha {t.alpha_h:.3f} (H-test) {t.alpha_britton:.3f} (Britton), "
                         f"{t.n_pairs} pairs" for t in self.laws) or "none for this lattice"
        return (f"twinning statistics ({self.source}, {self.d_max:.2f}-{self.d_min:.2f} Å, {self.n_acentric} "
                f"acentric): L-test <|L|> {self.mean_abs_l:.3f} <L^2> {self.mean_l2:.3f} (untwinned 0.500 / "
                f"0.333, perfect twin 0.375 / 0.200; {self.n_l_pairs} pairs), <I^2>/<I>^2 {self.i2_ratio:.2f} "
                f"(2.0 / 1.5); twin laws: {laws}")

    def verdict(self) -> str:
        """The line a user must not miss: "data look twinned: ..." or "no sign of twinning ..."."""
        if not self.twinned:
            return f"no sign of twinning ({self.reason})"
        t = self.strongest
        law = "" if t is None else f", twin law {t.law}, estimated fraction {t.alpha_h:.2f} (H-test)"
        return (f"data look twinned: L-test <|L|> {self.mean_abs_l:.2f}{law}; without a twin model "
                "(refine --twin auto|on) R-factors will be high")

    def as_dict(self) -> dict:
        """JSON-ready content (the ``"twinning"`` entry of summary.json)."""
        out = {**asdict(self), "summary": self.summary(), "verdict": self.verdict()}
        if self.twin_model is not None:
            out["twin_model"]["summary"] = self.twin_model.summary()
        return out


def twin_laws(cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
              max_obliquity_deg: float = 3.0) -> list[tuple[gemmi.Op, str, float]]:
    """Twin laws of this cell and space group: [(op, kind, metric deviation)].

    gemmi's ``find_twin_laws(cell, sg, max_obliq, all_ops=False)`` gives one operator per coset
    of the lattice's (pseudo-)symmetry over the space group's point group, within
    ``max_obliquity_deg`` of Le Page's obliquity. ``kind`` is "merohedral" when the law leaves
    the reciprocal metric tensor G* unchanged (max |R G* R^T - G*| / max |G*| < 1e-4, the
    deviation returned), else "pseudo-merohedral".
    """
    frac = np.array(cell.frac.mat.tolist())
    metric = frac @ frac.T  # reciprocal metric G*: |s|^2 = h G* h^T (Å^-2)
    out = []
    for op in gemmi.find_twin_laws(cell, spacegroup, max_obliquity_deg, False):
        rot = hkl_rotation(op)  # h' = h R: the law keeps every |s| exactly when R G* R^T = G*
        dev = float(np.abs(rot @ metric @ rot.T - metric).max() / np.abs(metric).max())
        out.append((op, "merohedral" if dev < 1e-4 else "pseudo-merohedral", dev))
    return out


class HklLookup:
    """Index of the unique reflections ``hkl`` (m, 3) that finds any hkl's symmetry (and
    Friedel) mate among them: ``find(query)`` (n, 3) -> (n,) int64 row, -1 when not measured."""

    def __init__(self, hkl: np.ndarray, spacegroup: gemmi.SpaceGroup) -> None:
        hkl = np.asarray(hkl, dtype=np.int64)
        rots = [hkl_rotation(op) for op in spacegroup.operations().sym_ops]
        images = np.concatenate([s * hkl @ r for r in rots for s in (1, -1)])
        rows = np.tile(np.arange(hkl.shape[0]), 2 * len(rots))
        self._base = 8 * int(np.abs(hkl).max(initial=1)) + 8
        keys = self._key(images)
        order = np.argsort(keys, kind="stable")
        self._keys, self._rows = keys[order], rows[order]

    def _key(self, hkl: np.ndarray) -> np.ndarray:
        half = self._base // 2
        h = np.clip(hkl, -half + 1, half - 1) + half
        return (h[:, 0] * self._base + h[:, 1]) * self._base + h[:, 2]

    def find(self, query: np.ndarray) -> np.ndarray:
        """(n,) row of each query hkl's symmetry mate, -1 where none was measured."""
        query = np.asarray(query, dtype=np.int64)
        keys = self._key(query)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        inside = np.all(np.abs(query) < self._base // 2 - 1, axis=1)
        return np.where((self._keys[pos] == keys) & inside, self._rows[pos], -1)


def observed_intensities(refl: Reflections) -> tuple[np.ndarray, np.ndarray, str]:
    """((m,) I, (m,) sigma(I), source): the file's intensities, or F^2 and 2 F sigma_F."""
    if refl.i_obs is not None and refl.sigma_i is not None:
        return refl.i_obs.cpu().numpy(), refl.sigma_i.cpu().numpy(), "intensities"
    f, s = refl.f_obs.cpu().numpy(), refl.sigma_f.cpu().numpy()
    return f * f, np.maximum(2.0 * f * s, s * s), "F^2"


def usable(intensity: np.ndarray, sigma: np.ndarray, d: np.ndarray, *, n_shells: int = 20,
           min_shell_i_over_sigma: float = MIN_SHELL_I_OVER_SIGMA) -> np.ndarray:
    """(m,) bool: d above the first equal-count shell (from low resolution) whose mean
    I/sigma is below ``min_shell_i_over_sigma``."""
    shell, n = equal_count_shells(d, n_shells, min_per_shell=50)
    ios = intensity / sigma
    keep_shell = np.ones(n, dtype=bool)
    for s in range(n):
        if np.mean(ios[shell == s]) < min_shell_i_over_sigma:
            keep_shell[s:] = False
            break
    if not keep_shell[0]:
        keep_shell[0] = True  # all shells weak: use the lowest-resolution one rather than nothing
    return keep_shell[shell]


def moment_ratio(intensity: np.ndarray, sigma: np.ndarray, d: np.ndarray, epsilon: np.ndarray,
                 *, n_shells: int = 10) -> float:
    """Acentric <I^2>/<I>^2 (dimensionless) of (m,) acentric intensities: per equal-count shell
    of 1/d^2, (<(I/eps)^2> - <(sigma/eps)^2>) / <I/eps>^2, averaged over the shells weighted by
    their counts. 2.0 untwinned, 1.5 perfectly twinned."""
    shell, n = equal_count_shells(d, n_shells, min_per_shell=50)
    z, sz = intensity / epsilon, sigma / epsilon
    ratios, counts = [], []
    for s in range(n):
        sel = shell == s
        if sel.sum() >= 20:
            ratios.append((np.mean(z[sel] ** 2) - np.mean(sz[sel] ** 2)) / np.mean(z[sel]) ** 2)
            counts.append(sel.sum())
    return float(np.average(ratios, weights=counts)) if ratios else float("nan")


def strong_pairs(i: np.ndarray, j: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
                 min_signal: float = MIN_PAIR_SIGNAL) -> np.ndarray:
    """(n,) bool for row pairs (i, j): I_i + I_j >= ``min_signal`` sqrt(sigma_i^2 + sigma_j^2)
    (a cut on the sum leaves the share I_i/(I_i + I_j) unbiased; module docstring)."""
    return intensity[i] + intensity[j] >= min_signal * np.sqrt(sigma[i] ** 2 + sigma[j] ** 2)


def l_test(hkl: np.ndarray, intensity: np.ndarray, sigma: np.ndarray, lookup: HklLookup, use: np.ndarray,
           steps: tuple[tuple[int, int, int], ...] = L_STEPS) -> tuple[float, float, int]:
    """Padilla & Yeates L-test: (<|L|>, <L^2>, number of pairs) over strong pairs of usable
    rows (``use`` (m,) bool, acentric) whose indices differ by one of ``steps``; L is clipped
    to [-1, 1] (a negative measured intensity can push it beyond)."""
    rows = np.flatnonzero(use)
    ls = []
    for step in steps:
        j = lookup.find(hkl[rows] + np.asarray(step))
        ok = (j >= 0) & (j != rows)
        ok[ok] &= use[j[ok]]
        i, j = rows[ok], j[ok]
        keep = strong_pairs(i, j, intensity, sigma)
        i1, i2 = intensity[i[keep]], intensity[j[keep]]
        ls.append(np.clip((i1 - i2) / (i1 + i2), -1.0, 1.0))
    values = np.concatenate(ls) if ls else np.zeros(0)
    if values.size == 0:
        return float("nan"), float("nan"), 0
    return float(np.mean(np.abs(values))), float(np.mean(values ** 2)), int(values.size)


def twin_pairs(hkl: np.ndarray, op: gemmi.Op, lookup: HklLookup, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (i, j), i < j, of usable reflections related by the twin law ``op`` (each pair once;
    reflections that the law maps onto themselves are left out)."""
    rows = np.flatnonzero(use)
    j = lookup.find(hkl[rows] @ hkl_rotation(op))
    ok = (j >= 0) & (j != rows)
    ok[ok] &= use[j[ok]]
    i, j = rows[ok], j[ok]
    pairs = np.unique(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def h_test(i1: np.ndarray, i2: np.ndarray) -> tuple[float, float]:
    """Yeates' H-test on twin-related acentric pairs (n,): (alpha = 1/2 - <H>, <H>)."""
    h = np.clip(np.abs(i1 - i2) / (i1 + i2), 0.0, 1.0)
    mean_h = float(np.mean(h))
    return max(0.0, 0.5 - mean_h), mean_h


def britton_alpha(i1: np.ndarray, i2: np.ndarray, fit_range: tuple[float, float] = BRITTON_RANGE) -> float:
    """Britton's twin fraction from twin-related acentric pairs (n,).

    The detwinned intensity of a pair member is negative at trial fraction beta exactly when
    its share u = I/(I1 + I2) is below beta, so the Britton curve N(beta) is the distribution
    function of u over both members; beyond the true alpha it is the line (beta - alpha) /
    (1 - 2 alpha). Fitting beta against N over ``fit_range`` (quantiles of u) and reading beta
    at N = 0 gives alpha.
    """
    u = np.clip(np.concatenate([i1 / (i1 + i2), i2 / (i1 + i2)]), 0.0, 1.0)
    p = np.linspace(*fit_range, 13)
    beta = np.quantile(u, p)
    _, intercept = np.polyfit(p, beta, 1)
    return float(np.clip(intercept, 0.0, 0.5))


def fit_twin_fraction(f_obs: np.ndarray, f_model: np.ndarray, hkl: np.ndarray, free: np.ndarray,
                      bin_index: np.ndarray, spacegroup: gemmi.SpaceGroup, law: TwinLaw, *,
                      step: float = 0.005) -> TwinModelFit:
    """Least-squares twin fraction of a model: minimise sum_work (F_o - k_bin F_twin(alpha))^2
    over alpha in [0, 0.5] on a grid of ``step``, with F_twin = sqrt((1 - alpha) |F_model(h)|^2
    + alpha |F_model(T h)|^2) (the twinned intensity of Yeates 1997) and k_bin the closed-form
    LS scale of each resolution bin at every alpha (``twin_model.fit_fractions``, the fit that
    twin refinement repeats every macro-cycle). Reflections whose mate is not measured are left
    out of the fit; in the R-factors their own |F_model| stands in for the mate.

    f_obs, f_model (m,): observed and model amplitudes (F_model with the untwinned fit's scales);
    hkl (m, 3); free (m,) bool; bin_index (m,) int; law: from ``twin_statistics``. The free
    reflections' twin mates stay in the working set here (only alpha and the bin scales are
    fitted, so that matters little; twin refinement moves them out, ``twin_model``).
    """
    from equipoise.xtal.twin_model import TwinOperators, fit_fractions

    f_obs_t, f_model_t = torch.as_tensor(f_obs), torch.as_tensor(f_model, dtype=torch.float64)
    bins = torch.as_tensor(bin_index, dtype=torch.int64)
    n_bins = int(bins.max()) + 1
    work = ~torch.as_tensor(np.asarray(free, dtype=bool))
    ops = TwinOperators.build(np.asarray(hkl, dtype=np.int64), spacegroup, [law.law], [law.rotation])
    fit = fit_fractions(f_obs_t, f_model_t, ops, work & ~ops.missing, bins, n_bins,
                        torch.tensor([law.alpha_h], dtype=torch.float64), step=step)

    def r(alpha: float, mask: torch.Tensor) -> float:
        f = ops.amplitudes(f_model_t, torch.tensor([alpha], dtype=torch.float64))
        f = f * bin_scale(f_obs_t, f, bins, n_bins, work & ~ops.missing)[bins]
        return r_factor(f_obs_t, f, mask)

    alpha = fit.alphas[0]
    return TwinModelFit(law.law, alpha, r(alpha, work), r(alpha, ~work), r(0.0, work), r(0.0, ~work),
                        ops.n_missing)


def add_twin_model(summary: TwinningSummary, refl: Reflections, f_model) -> TwinModelFit | None:
    """For data that look twinned, fit the strongest law's fraction to a model's amplitudes
    ``f_model`` ((m,) |F_model| tensor or array, current scales) with ``fit_twin_fraction``;
    stores and returns the fit (None for untwinned data)."""
    law = summary.strongest
    if not summary.twinned or law is None:
        return None
    f_model = np.asarray(f_model.detach().cpu().numpy() if hasattr(f_model, "detach") else f_model)
    summary.twin_model = fit_twin_fraction(refl.f_obs.cpu().numpy(), f_model, refl.hkl.cpu().numpy(),
                                           refl.free.cpu().numpy(), refl.bin_index.cpu().numpy(),
                                           refl.spacegroup, law)
    return summary.twin_model


def twin_statistics(refl: Reflections, *, max_obliquity_deg: float = 3.0) -> TwinningSummary:
    """Twinning statistics of observed data (module docstring): L-test, <I^2>/<I>^2, and the
    H-test and Britton fractions of every twin law, with the verdict."""
    intensity, sigma, source = observed_intensities(refl)
    return twin_statistics_arrays(refl.hkl.cpu().numpy(), intensity, sigma, refl.d.cpu().numpy(),
                                  refl.centric.cpu().numpy(), refl.epsilon.cpu().numpy(), refl.cell,
                                  refl.spacegroup, source=source, max_obliquity_deg=max_obliquity_deg)


def twin_statistics_arrays(hkl: np.ndarray, intensity: np.ndarray, sigma: np.ndarray, d: np.ndarray,
                           centric: np.ndarray, epsilon: np.ndarray, cell: gemmi.UnitCell,
                           spacegroup: gemmi.SpaceGroup, *, source: str = "intensities",
                           max_obliquity_deg: float = 3.0) -> TwinningSummary:
    """``twin_statistics`` on arrays: hkl (m, 3) unique reflections, intensity and sigma (m,)
    (any consistent unit), d (m,) Å, centric (m,) bool, epsilon (m,) epsilon factors."""
    hkl = np.asarray(hkl, dtype=np.int64)
    use = usable(intensity, sigma, d) & ~np.asarray(centric, dtype=bool)
    lookup = HklLookup(hkl, spacegroup)
    laws, invariant = [], np.zeros(hkl.shape[0], dtype=bool)
    for op, kind, dev in twin_laws(cell, spacegroup, max_obliquity_deg):
        invariant |= lookup.find(hkl @ hkl_rotation(op)) == np.arange(hkl.shape[0])
        i, j = twin_pairs(hkl, op, lookup, use)
        keep = strong_pairs(i, j, intensity, sigma)
        i, j = i[keep], j[keep]
        if i.size < 20:
            continue
        alpha_h, mean_h = h_test(intensity[i], intensity[j])
        laws.append(TwinLaw(op.as_hkl().triplet(), kind, hkl_rotation(op).tolist(), dev, int(i.size), alpha_h,
                            britton_alpha(intensity[i], intensity[j]), mean_h))
    # reflections that a twin law maps onto themselves (for -h,k,-l in P 43: the 0kl and h0l
    # planes) keep the untwinned distribution whatever the fraction: not in L and the moments
    use &= ~invariant
    mean_abs_l, mean_l2, n_l = l_test(hkl, intensity, sigma, lookup, use)
    ratio = moment_ratio(intensity[use], sigma[use], d[use], epsilon[use])
    summary = TwinningSummary(source, float(d[use].max()) if use.any() else float("nan"),
                              float(d[use].min()) if use.any() else float("nan"), int(use.sum()),
                              mean_abs_l, mean_l2, n_l, ratio, laws)
    summary.twinned, summary.reason = _verdict(summary)
    return summary


def _verdict(s: TwinningSummary) -> tuple[bool, str]:
    if s.mean_abs_l < L_FLAG:
        return True, f"<|L|> {s.mean_abs_l:.3f} < {L_FLAG}"
    for t in s.laws:
        if min(t.alpha_h, t.alpha_britton) > ALPHA_FLAG:
            return True, f"twin law {t.law}: H-test {t.alpha_h:.3f} and Britton {t.alpha_britton:.3f} > {ALPHA_FLAG}"
    laws = ", ".join(f"{t.law} alpha(H) {t.alpha_h:.3f}" for t in s.laws) or "no twin law"
    return False, f"<|L|> {s.mean_abs_l:.3f} >= {L_FLAG}; {laws}"


def hkl_rotation(op: gemmi.Op) -> np.ndarray:
    """(3, 3) int64 rotation of ``op`` as it acts on Miller indices (h' = h R)."""
    rot = np.array(op.rot, dtype=np.int64)
    return rot // op.DEN


TWIN_MODES = ("auto", "on", "off")


@dataclass
class TwinChoice:
    """Twin laws to refine: names, (3, 3) integer rotations (h' = h R), starting fractions, why."""

    laws: list[str]
    rotations: list[list[list[int]]]
    alphas: list[float]
    reason: str


def choose_twin(mode: str, summary: TwinningSummary, cell: gemmi.UnitCell,
                spacegroup: gemmi.SpaceGroup) -> TwinChoice | None:
    """Twin refinement for ``--twin`` ``mode``: ``"off"`` None; ``"auto"`` the strongest law and
    every law whose H-test and Britton fractions both exceed ``ALPHA_FLAG`` when the verdict is
    twinned, else None; ``"on"`` every law of the statistics (or of the lattice, ``twin_laws``,
    when none had enough pairs), ``InputError`` when the lattice has none. Starting fractions:
    the H-test's, clipped to [0.05, 0.45] (the fraction is refitted before the first target)."""
    if mode not in TWIN_MODES:
        raise InputError(f"must be one of {TWIN_MODES}, got {mode!r}", field="--twin")
    if mode == "off":
        return None
    strongest = summary.strongest
    if mode == "auto":
        if not summary.twinned or strongest is None:
            return None
        laws = [t for t in summary.laws if t is strongest or min(t.alpha_h, t.alpha_britton) > ALPHA_FLAG]
        why = f"--twin auto: {summary.reason}"
    elif summary.laws:
        laws, why = list(summary.laws), "--twin on: every twin law of the statistics"
    else:
        found = twin_laws(cell, spacegroup)
        if not found:
            raise InputError(f"this lattice ({spacegroup.hm}, cell {' '.join(f'{p:.2f}' for p in cell.parameters)}) "
                             "has no twin law", field="--twin")
        return TwinChoice([op.as_hkl().triplet() for op, _, _ in found], [hkl_rotation(op).tolist() for op, _, _ in found],
                          [0.05] * len(found), "--twin on: the lattice's twin laws (too few pairs for statistics)")
    return TwinChoice([t.law for t in laws], [t.rotation for t in laws],
                      [float(np.clip(t.alpha_h, 0.05, 0.45)) for t in laws], why)
