"""``XrayModel``: the X-ray side of a refinement, built from an AtomModel and Reflections.

Usage (refinement code)::

    xm = XrayModel(model, refl)                        # checks cell/space group, plans the FFT
    xm.update_scales(xyz, b_iso, occ)                  # mask, k_sol/B_sol, aniso, bin scales, sigmaA
    b_iso, delta = xm.overall_b_to_atoms(xyz, b_iso, occ, (2.0, 300.0))   # refinement: overall B into the atoms
    fc = xm.fcalc(xyz, b_iso, occ)                     # (m,) complex, differentiable in xyz, B, occ
    loss = xm.target(fc)                               # ML (default) or LS on the working set
    stats = xm.r_factors(fc)                           # {"r_work", "r_free", "cc_work", ...}

    xm.set_twin(["-h,k,-l"], [rotation], [0.3])        # twin refinement (twin_model.py): the target
                                                       # becomes LS on twinned amplitudes, the fraction
                                                       # is refitted in every update_scales

``fcalc`` returns atomic structure factors only; scales and the bulk-solvent contribution are
held constant between ``update_scales`` calls (as in servalcat and phenix.refine macro-cycles)
and applied inside ``f_model``/``target``/``r_factors``. ``model_amplitudes`` is what is
compared with F_obs: |F_model|, or with a twin model the twinned amplitude.
"""

from __future__ import annotations

import torch

from equipoise.errors import InputError
from equipoise.xtal.model import site_multiplicity
from equipoise.xtal.reflections import Reflections, equal_count_shells
from equipoise.xtal.scaling import Scales, bin_scale, model_amplitudes, symmetry_projector, update_scales
from equipoise.xtal.solvent import mask_structure_factors
from equipoise.xtal.structure_factors import (FFTStructureFactors, direct_structure_factors,
                                              fractionalization_matrix, reciprocal_vectors, symmetry_operators)
from equipoise.xtal.targets import MLParams, correlation, estimate_ml_params, least_squares, ml_nll, r_factor, sigma_a
from equipoise.xtal.twin_model import (TwinFractionFit, TwinOperators, fit_fractions, residual_weights,
                                       twin_consistent_work, twin_least_squares)

TARGETS = ("ml", "ls")
METHODS = ("auto", "fft", "direct")


#: bins of the ML target's D and S that a small data set gets even when its free set allows fewer
MIN_ML_BINS = 6
#: reflections per ML bin at least, for those extra bins
ML_BIN_MIN_REFLECTIONS = 100


def ml_bins(refl: Reflections) -> tuple[torch.Tensor, int]:
    """Resolution bins of the ML target's D and S: the data's bins (>= 40 free reflections each),
    or, when those are fewer than ``MIN_ML_BINS`` and the data allow more bins of
    ``ML_BIN_MIN_REFLECTIONS``, that many equal-count bins, whose D and S then come from the
    working set (``estimate_ml_params``: fewer than its minimum of free reflections per bin). With
    one bin over the whole range (5wkd: 367 reflections, 22 free) D and S cannot fall with
    resolution, and the ML target and the scales traded ~1.4 A^2 of overall B every cycle.
    Returns ((m,) bin index, number of bins)."""
    n = min(refl.n // ML_BIN_MIN_REFLECTIONS, MIN_ML_BINS)
    if refl.n_bins >= n:
        return refl.bin_index, refl.n_bins
    shells, n = equal_count_shells(refl.d.cpu().numpy(), n, ML_BIN_MIN_REFLECTIONS)
    return torch.as_tensor(shells, dtype=torch.long, device=refl.d.device), n


def special_position_notes(model) -> list[str]:
    """Notes on atoms on a special position of multiplicity m (``model.site_multiplicity``)
    whose occupancy exceeds 1/m: the PDB convention divides it
    by m, and structure factors count the atom m times."""
    over = []
    for label, atom, occ in zip(model.labels, (a for ch in model.structure[0] for r in ch for a in r),
                                model.occ.tolist()):
        m = site_multiplicity(model.cell, atom.pos)
        if m > 1 and occ > 1.0 / m + 0.01:
            over.append(f"{label} (occupancy {occ:.2f}, multiplicity {m})")
    if not over:
        return []
    return [f"{len(over)} atom(s) on a special position have an occupancy above 1/multiplicity, so "
            f"they are counted more than once in F: {', '.join(over[:5])}{' ...' if len(over) > 5 else ''} "
            "(the PDB convention is occupancy / multiplicity)"]


class XrayModel:
    """Structure factors, scales, target and statistics for one model against one data set.

    model: an ``AtomModel`` (given a cell/space group from the data when it has none, noted);
    refl: ``Reflections``; target: ``"ml"`` (default) or ``"ls"``; method: ``"fft"``,
    ``"direct"`` or ``"auto"`` (direct below 20,000 atom x reflection-operator products).
    """

    def __init__(self, model, refl: Reflections, *, target: str = "ml", method: str = "auto") -> None:
        if target not in TARGETS:
            raise InputError(f"target must be one of {TARGETS}, got {target!r}", field="target")
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}", field="method")
        self.notes: list[str] = []
        if model.spacegroup is None or model.cell.volume < 10.0:
            model.with_symmetry(refl.cell, refl.spacegroup)
            self.notes.append(f"model has no cell/space group: using the data's ({refl.spacegroup.hm}, "
                              f"{' '.join(f'{p:.2f}' for p in refl.cell.parameters)})")
        else:
            refl.check_model(model.cell, model.spacegroup, model.path)
        self.notes += special_position_notes(model)
        #: resolution bins of the ML target's D and S (``ml_bins``)
        self.ml_bin_index, self.ml_n_bins = ml_bins(refl)
        if self.ml_n_bins != refl.n_bins:
            self.notes.append(f"ML target: D and S in {self.ml_n_bins} resolution bins from the working set "
                              f"({int(refl.free.sum())} free reflections allow {refl.n_bins} bin(s) of 40)")
        self.model, self.refl, self.target_kind = model, refl, target
        self.dtype, self.device = refl.f_obs.dtype, refl.f_obs.device
        frac = fractionalization_matrix(refl.cell, dtype=self.dtype, device=self.device)
        self.s = reciprocal_vectors(refl.hkl, frac)
        rot, _ = symmetry_operators(refl.spacegroup, dtype=self.dtype, device=self.device)
        orth = torch.linalg.inv(frac)
        self.projector = symmetry_projector(orth @ rot @ frac)
        n_ops = len(refl.spacegroup.operations())
        if method == "auto":
            method = "direct" if model.n_atoms * refl.n * n_ops <= 20_000 * 50 else "fft"
        self.method = method
        self._fft = (FFTStructureFactors(refl.hkl, refl.cell, refl.spacegroup, model.elements,
                                         dtype=self.dtype, device=self.device) if method == "fft" else None)
        self.f_mask = torch.zeros(refl.n, dtype=torch.complex128, device=self.device)
        self.scales = Scales(0.0, 0.0, torch.zeros(3, 3, dtype=self.dtype), torch.ones(refl.n_bins, dtype=self.dtype))
        self.ml: MLParams | None = None
        #: (m,) bool working set: the data's, less the twin mates of free reflections with a twin model
        self.work = refl.work
        #: twin model (``set_twin``): operators, (K,) fractions, the last fraction fit, LS weights
        self.twin: TwinOperators | None = None
        self.twin_alphas: torch.Tensor | None = None
        self.twin_fit: TwinFractionFit | None = None
        self.n_moved_from_work = 0
        self._twin_weight: torch.Tensor | None = None

    def set_twin(self, laws: list[str], rotations: list, alphas: list[float], *,
                 twin_consistent_free: bool = True) -> list[str]:
        """Refine against twinned data from now on: laws (K names), rotations (K (3, 3) integer
        matrices, h' = h R), starting fractions (K,). With ``twin_consistent_free`` the twin mates
        of free reflections leave the working set. Returns notes for the log."""
        r = self.refl
        self.twin = TwinOperators.build(r.hkl, r.spacegroup, laws, rotations)
        self.twin_alphas = torch.as_tensor(alphas, dtype=self.dtype, device=self.device)
        notes = [f"twin model: law(s) {', '.join(laws)}, starting fraction(s) "
                 f"{', '.join(f'{a:.3f}' for a in alphas)}; target: least squares on twinned amplitudes "
                 f"(weighted per bin by 1/<(Fo - F_twin)^2>), the fraction refitted at every scale update",
                 f"twin model: {self.twin.n_missing} reflections have an unmeasured twin mate: left out of "
                 "the twin target and the fraction fit (their own |F_model| stands in for R and maps)"]
        if twin_consistent_free:
            self.work, self.n_moved_from_work = twin_consistent_work(r.work, r.free, self.twin)
            notes.append(f"twin model: {self.n_moved_from_work} working reflections are twin mates of free "
                         "reflections: moved out of the working set (in neither set), so the free set's "
                         "intensities are not fitted through their mates")
        else:
            notes.append("twin model: free flags not made twin-consistent: free reflections' twin mates stay "
                         "in the working set (R-free is biased low)")
        return notes

    def fcalc(self, xyz: torch.Tensor, b_iso: torch.Tensor, occ: torch.Tensor,
              u_aniso: torch.Tensor | None = None) -> torch.Tensor:
        """(m,) complex atomic structure factors (no solvent, no scale); xyz (n, 3) Å, B Å^2."""
        if self._fft is not None:
            return self._fft(xyz, b_iso, occ, u_aniso)
        return direct_structure_factors(self.refl.hkl, xyz, b_iso, occ, self.model.elements, self.refl.cell,
                                        self.refl.spacegroup, u_aniso)

    def update_scales(self, xyz: torch.Tensor | None = None, b_iso: torch.Tensor | None = None,
                      occ: torch.Tensor | None = None, u_aniso: torch.Tensor | None = None,
                      *, fcalc: torch.Tensor | None = None) -> Scales:
        """Recompute the solvent mask at the current atoms, refit all scales and the ML sigmaA
        parameters. Without arguments: the AtomModel as read (anisotropic atoms with their U);
        with xyz, b_iso, occ (the refinement's atoms): isotropic atoms unless ``u_aniso`` is given,
        so the scales fit the same F_calc as ``fcalc(xyz, b_iso, occ)``. Returns the new ``Scales``."""
        m = self.model
        as_read = xyz is None and b_iso is None and occ is None
        xyz = m.xyz if xyz is None else xyz
        b_iso = m.b_iso if b_iso is None else b_iso
        occ = m.occ if occ is None else occ
        u_aniso = m.u_aniso if u_aniso is None and as_read else u_aniso
        with torch.no_grad():
            fc = self.fcalc(xyz, b_iso, occ, u_aniso) if fcalc is None else fcalc.detach()
            structure = m.to_structure(xyz=xyz, b_iso=b_iso, occ=occ)
            self.f_mask = mask_structure_factors(structure, self.refl.hkl, d_min=self.refl.d_min)
            r = self.refl
            self.scales = self._fit_scales(fc)
            if self.twin is not None:
                self._fit_twin(fc)
            self._fit_ml(fc)
        return self.scales

    def overall_b_to_atoms(self, xyz: torch.Tensor, b_iso: torch.Tensor, occ: torch.Tensor,
                           b_range: tuple[float, float]) -> tuple[torch.Tensor, float]:
        """Move the overall isotropic fall-off of the scales into the atoms; returns the atoms' new
        B (n,) Å^2 and the fall-off delta (Å^2) that was moved.

        Refinement calls it after every ``update_scales``, as servalcat ("Applying overall B to
        model") and phenix.refine (the back trace of the overall scale's B) do: the fall-off
        delta = tr(B_aniso) / 3 + B_bins, where B_bins is the slope of ln k_bin against the bins'
        mean s^2 (ln k_bin ~ c - B_bins s^2 / 4, weighted by working counts), leaves the scales
        (B_aniso traceless, B_sol + delta, k_bin refitted in closed form at the new atoms) and every
        atom's B rises by delta (clamped to ``b_range``). F_model is unchanged up to the bins' width
        in s^2. Without it the atoms' mean B is not fixed by the data: the bin scales and the
        trace of B_aniso trade it back and forth (on 1A0F they carried +17 and -11 Å^2), and it
        drifts (on 5wkd it rose 1 Å^2 per macro-cycle). Isotropic atoms (refinement's model).
        """
        r, sc, work = self.refl, self.scales, self._fit_work
        with torch.no_grad():
            s2 = (self.s * self.s).sum(-1)
            count = torch.bincount(r.bin_index[work], minlength=r.n_bins).to(s2.dtype)
            x = torch.zeros_like(count).index_add_(0, r.bin_index[work], s2[work]) / count.clamp_min(1.0)
            b_bins = 0.0
            if int((count > 0).sum()) > 1:
                y = torch.log(sc.k_bin.clamp_min(1e-30))
                x0, y0 = (count * x).sum() / count.sum(), (count * y).sum() / count.sum()
                b_bins = float(-4.0 * (count * (x - x0) * (y - y0)).sum() / (count * (x - x0) ** 2).sum())
            b_trace = float(torch.diagonal(sc.b_aniso).sum()) / 3.0
            delta = b_trace + b_bins
            new_b = (b_iso.detach() + delta).clamp(*b_range)
            sc.b_aniso = sc.b_aniso - b_trace * torch.eye(3, dtype=sc.b_aniso.dtype, device=sc.b_aniso.device)
            sc.b_sol += delta
            sc.k_bin = torch.ones_like(sc.k_bin)          # model_amplitudes below: without bin scales
            fc = self.fcalc(xyz, new_b, occ)
            sc.k_bin = bin_scale(r.f_obs, self.model_amplitudes(fc), r.bin_index, r.n_bins, work)
            if self.twin is not None:
                self._twin_weight = residual_weights(r.f_obs, self.model_amplitudes(fc), work, r.bin_index, r.n_bins)
            self._fit_ml(fc)
        return new_b, delta

    def _fit_ml(self, fc: torch.Tensor) -> None:
        """The ML target's D and S per bin at the current scales (free set, ``estimate_ml_params``)."""
        r = self.refl
        self.ml = estimate_ml_params(r.f_obs, r.sigma_f, self.model_amplitudes(fc), r.centric, r.epsilon,
                                     self.ml_bin_index, self.ml_n_bins, r.free)

    @property
    def _fit_work(self) -> torch.Tensor:
        """(m,) bool reflections the scales are fitted on: the working set, less (with a twin
        model) those whose twin mate is unmeasured."""
        return self.work if self.twin is None else self.work & ~self.twin.missing

    def _fit_scales(self, fc: torch.Tensor) -> Scales:
        """All scales at the current mask (and twin fractions), on the working set."""
        r = self.refl
        combine = None if self.twin is None else (lambda f: self.twin.amplitudes(f, self.twin_alphas))
        return update_scales(r.f_obs, fc, self.f_mask, self.s, r.bin_index, r.n_bins, self._fit_work,
                             self.projector, combine=combine)

    def _fit_twin(self, fc: torch.Tensor) -> None:
        """Twin fractions by ``fit_fractions`` at the scales just fitted, then the scales again at
        the new fractions, then the target's per-bin weights."""
        r, ops, use = self.refl, self.twin, self._fit_work
        fit = fit_fractions(r.f_obs, self.f_model(fc).abs(), ops, use, r.bin_index, r.n_bins, self.twin_alphas)
        self.twin_alphas = torch.tensor(fit.alphas, dtype=self.dtype, device=self.device)
        self.scales = self._fit_scales(fc)
        self.twin_fit = fit
        self._twin_weight = residual_weights(r.f_obs, self.model_amplitudes(fc), use, r.bin_index, r.n_bins)

    def model_amplitudes(self, fcalc: torch.Tensor) -> torch.Tensor:
        """(m,) the model amplitudes compared with F_obs: |F_model|, or with a twin model
        sqrt(sum_k alpha_k |F_model(T_k h)|^2) (differentiable in fcalc)."""
        f = self.f_model(fcalc).abs()
        return f if self.twin is None else self.twin.amplitudes(f, self.twin_alphas)

    def f_model(self, fcalc: torch.Tensor) -> torch.Tensor:
        """(m,) complex F_model = k_bin k_aniso (F_calc + k_mask F_mask) with the current scales."""
        return model_amplitudes(fcalc, self.f_mask, self.s, self.refl.bin_index, self.scales)

    def target(self, fcalc: torch.Tensor, free: bool = False) -> torch.Tensor:
        """Scalar target on the working set (``free=True``: the free set): ML -log-likelihood
        per reflection, or LS normalised by sum F_o^2; with a twin model ``twin_least_squares``
        per reflection over those with all mates measured."""
        r = self.refl
        mask = r.free if free else self.work
        fc = self.model_amplitudes(fcalc)
        if self.twin is not None:
            weight = self._twin_weight if self._twin_weight is not None else 1.0 / (r.f_obs ** 2).mean()
            return twin_least_squares(r.f_obs, fc, weight, mask & ~self.twin.missing)
        if self.target_kind == "ls" or self.ml is None:
            return least_squares(r.f_obs, fc, mask)
        nll = ml_nll(r.f_obs, r.sigma_f, fc, r.centric, r.epsilon, self.ml.d[self.ml_bin_index],
                     self.ml.s[self.ml_bin_index])
        return nll[mask].sum() / max(int(mask.sum()), 1)

    def r_factors(self, fcalc: torch.Tensor | None = None) -> dict:
        """{"r_work", "r_free", "r_free_rescaled", "cc_work", "cc_free", "n_work", "n_free"} at
        ``fcalc`` (default: the model's current atoms). ``r_free`` uses the working-set scales;
        ``r_free_rescaled`` rescales the free set by its own overall scale, as cctbx/phenix
        report it (see ``targets.r_factor``). With a twin model the R-factors are of the twinned
        amplitudes over the working set of ``set_twin`` (the twin mates of free reflections left
        out), and ``r_work_untwinned``/``r_free_untwinned`` score |F_model| at the same scales."""
        r = self.refl
        if fcalc is None:
            with torch.no_grad():
                m = self.model
                fcalc = self.fcalc(m.xyz, m.b_iso, m.occ, m.u_aniso)
        fc = self.model_amplitudes(fcalc.detach())
        out = {"r_work": r_factor(r.f_obs, fc, self.work), "r_free": r_factor(r.f_obs, fc, r.free),
               "r_free_rescaled": r_factor(r.f_obs, fc, r.free, rescale=True),
               "cc_work": correlation(r.f_obs, fc, self.work), "cc_free": correlation(r.f_obs, fc, r.free),
               "n_work": int(self.work.sum()), "n_free": int(r.free.sum())}
        if self.twin is not None:
            plain = self.f_model(fcalc.detach()).abs()
            out.update(r_work_untwinned=r_factor(r.f_obs, plain, self.work),
                       r_free_untwinned=r_factor(r.f_obs, plain, r.free))
        return out

    def shells(self, fcalc: torch.Tensor) -> list[dict]:
        """Per-bin table: d range (Å), counts, R-work, R-free, CC-work, k_bin, D, sigmaA."""
        r = self.refl
        fc = self.model_amplitudes(fcalc.detach())
        # D and sigmaA per reflection (their bins may be finer than the scales'), averaged per row
        d_ref = None if self.ml is None else self.ml.d[self.ml_bin_index]
        sa = None if self.ml is None else \
            sigma_a(r.f_obs, fc, self.ml_bin_index, self.ml_n_bins, self.ml)[self.ml_bin_index]
        rows = []
        for b in range(r.n_bins):
            sel = r.bin_index == b
            rows.append({"bin": b, "d_max": float(r.d[sel].max()), "d_min": float(r.d[sel].min()),
                         "n_work": int((sel & self.work).sum()), "n_free": int((sel & r.free).sum()),
                         "r_work": r_factor(r.f_obs, fc, sel & self.work),
                         "r_free": r_factor(r.f_obs, fc, sel & r.free),
                         "cc_work": correlation(r.f_obs, fc, sel & self.work),
                         "k_bin": float(self.scales.k_bin[b]),
                         "D": None if d_ref is None else float(d_ref[sel].mean()),
                         "sigma_a": None if sa is None else float(sa[sel].mean())})
        return rows

    def write_maps(self, fcalc: torch.Tensor, path) -> None:
        """Write maps.mtz (2mFo-DFc as FWT/PHWT, mFo-DFc as DELFWT/PHDELWT) at ``fcalc``. With a
        twin model F_o is detwinned by the model, F_o |F_model(h)| / F_twin(h) (which carries
        model bias: the twin mates' share comes from the model)."""
        from equipoise.xtal.maps import map_coefficients, write_map_mtz

        r = self.refl
        fcalc = fcalc.detach()
        fom, d = self.fom_and_d(fcalc)
        f_model = self.f_model(fcalc)
        f_obs = r.f_obs
        if self.twin is not None:  # detwinned by the model
            f_obs = r.f_obs * f_model.abs() / self.model_amplitudes(fcalc).clamp_min(1e-30)
        two, diff = map_coefficients(f_obs, f_model, fom, d, r.centric, r.free)
        write_map_mtz(path, r.hkl, r.cell, r.spacegroup, r.f_obs, r.sigma_f, r.free, fom, two, diff)

    def fom_and_d(self, fcalc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Figure of merit m (m,) and D (m,) for map coefficients (Read 1986): acentric
        m = I1(X)/I0(X), centric m = tanh(X/2), X = 2 F_o D F_c / Sig."""
        r = self.refl
        fc = self.model_amplitudes(fcalc.detach())
        if self.ml is None:
            ones = torch.ones_like(fc)
            return ones, ones
        d = self.ml.d[self.ml_bin_index]
        s = self.ml.s[self.ml_bin_index]
        sig = torch.where(r.centric, r.epsilon * s + r.sigma_f ** 2, r.epsilon * s + 2 * r.sigma_f ** 2)
        x = 2.0 * r.f_obs * d * fc / sig
        m = torch.where(r.centric, torch.tanh(x / 2.0), torch.special.i1e(x) / torch.special.i0e(x))
        return m, d

