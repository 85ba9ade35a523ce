"""``XrayModel``: the X-ray side of a refinement, built from an AtomModel and Reflections.

Usage (refinement code)::

    xm = XrayModel(model, refl)                        # checks cell/space group, plans the FFT
    xm.update_scales(xyz, b_iso, occ)                  # mask, k_sol/B_sol, aniso, bin scales, sigmaA
    fc = xm.fcalc(xyz, b_iso, occ)                     # (m,) complex, differentiable in xyz, B, occ
    loss = xm.target(fc)                               # ML (default) or LS on the working set
    stats = xm.r_factors(fc)                           # {"r_work", "r_free", "cc_work", ...}

``fcalc`` returns atomic structure factors only; scales and the bulk-solvent contribution are
held constant between ``update_scales`` calls (as in servalcat and phenix.refine macro-cycles)
and applied inside ``f_model``/``target``/``r_factors``.
"""

from __future__ import annotations

import torch

from equipoise.errors import InputError
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.scaling import Scales, model_amplitudes, symmetry_projector, update_scales
from equipoise.xtal.solvent import mask_structure_factors
from equipoise.xtal.structure_factors import (FFTStructureFactors, direct_structure_factors,
                                              fractionalization_matrix, reciprocal_vectors, symmetry_operators)
from equipoise.xtal.targets import MLParams, correlation, estimate_ml_params, least_squares, ml_nll, r_factor, sigma_a

TARGETS = ("ml", "ls")
METHODS = ("auto", "fft", "direct")


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
        parameters. Arguments default to the AtomModel's tensors; returns the new ``Scales``."""
        m = self.model
        xyz = m.xyz if xyz is None else xyz
        b_iso = m.b_iso if b_iso is None else b_iso
        occ = m.occ if occ is None else occ
        u_aniso = m.u_aniso if u_aniso is None else u_aniso
        with torch.no_grad():
            fc = self.fcalc(xyz, b_iso, occ, u_aniso) if fcalc is None else fcalc.detach()
            structure = m.to_structure(xyz=xyz, b_iso=b_iso, occ=occ)
            self.f_mask = mask_structure_factors(structure, self.refl.hkl, d_min=self.refl.d_min)
            r = self.refl
            self.scales = update_scales(r.f_obs, fc, self.f_mask, self.s, r.bin_index, r.n_bins, r.work,
                                        self.projector)
            self.ml = estimate_ml_params(r.f_obs, r.sigma_f, self.f_model(fc).abs(), r.centric, r.epsilon,
                                         r.bin_index, r.n_bins, r.free)
        return self.scales

    def f_model(self, fcalc: torch.Tensor) -> torch.Tensor:
        """(m,) complex F_model = k_bin k_aniso (F_calc + k_mask F_mask) with the current scales."""
        return model_amplitudes(fcalc, self.f_mask, self.s, self.refl.bin_index, self.scales)

    def target(self, fcalc: torch.Tensor, free: bool = False) -> torch.Tensor:
        """Scalar target on the working set (``free=True``: the free set): ML -log-likelihood
        per reflection, or LS normalised by sum F_o^2."""
        r = self.refl
        mask = r.free if free else r.work
        fc = self.f_model(fcalc).abs()
        if self.target_kind == "ls" or self.ml is None:
            return least_squares(r.f_obs, fc, mask)
        nll = ml_nll(r.f_obs, r.sigma_f, fc, r.centric, r.epsilon, self.ml.d[r.bin_index], self.ml.s[r.bin_index])
        return nll[mask].sum() / max(int(mask.sum()), 1)

    def r_factors(self, fcalc: torch.Tensor | None = None) -> dict:
        """{"r_work", "r_free", "r_free_rescaled", "cc_work", "cc_free", "n_work", "n_free"} at
        ``fcalc`` (default: the model's current atoms). ``r_free`` uses the working-set scales;
        ``r_free_rescaled`` rescales the free set by its own overall scale, as cctbx/phenix
        report it (see ``targets.r_factor``)."""
        r = self.refl
        if fcalc is None:
            with torch.no_grad():
                m = self.model
                fcalc = self.fcalc(m.xyz, m.b_iso, m.occ, m.u_aniso)
        fc = self.f_model(fcalc.detach()).abs()
        return {"r_work": r_factor(r.f_obs, fc, r.work), "r_free": r_factor(r.f_obs, fc, r.free),
                "r_free_rescaled": r_factor(r.f_obs, fc, r.free, rescale=True),
                "cc_work": correlation(r.f_obs, fc, r.work), "cc_free": correlation(r.f_obs, fc, r.free),
                "n_work": int(r.work.sum()), "n_free": int(r.free.sum())}

    def shells(self, fcalc: torch.Tensor) -> list[dict]:
        """Per-bin table: d range (Å), counts, R-work, R-free, CC-work, k_bin, D, sigmaA."""
        r = self.refl
        fc = self.f_model(fcalc.detach()).abs()
        sa = sigma_a(r.f_obs, fc, r.bin_index, r.n_bins, self.ml) if self.ml is not None else None
        rows = []
        for b in range(r.n_bins):
            sel = r.bin_index == b
            rows.append({"bin": b, "d_max": float(r.d[sel].max()), "d_min": float(r.d[sel].min()),
                         "n_work": int((sel & r.work).sum()), "n_free": int((sel & r.free).sum()),
                         "r_work": r_factor(r.f_obs, fc, sel & r.work), "r_free": r_factor(r.f_obs, fc, sel & r.free),
                         "cc_work": correlation(r.f_obs, fc, sel & r.work),
                         "k_bin": float(self.scales.k_bin[b]),
                         "D": None if self.ml is None else float(self.ml.d[b]),
                         "sigma_a": None if sa is None else float(sa[b])})
        return rows

    def write_maps(self, fcalc: torch.Tensor, path) -> None:
        """Write maps.mtz (2mFo-DFc as FWT/PHWT, mFo-DFc as DELFWT/PHDELWT) at ``fcalc``."""
        from equipoise.xtal.maps import map_coefficients, write_map_mtz

        r = self.refl
        fom, d = self.fom_and_d(fcalc)
        two, diff = map_coefficients(r.f_obs, self.f_model(fcalc.detach()), fom, d, r.centric, r.free)
        write_map_mtz(path, r.hkl, r.cell, r.spacegroup, r.f_obs, r.sigma_f, r.free, fom, two, diff)

    def fom_and_d(self, fcalc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Figure of merit m (m,) and D (m,) for map coefficients (Read 1986): acentric
        m = I1(X)/I0(X), centric m = tanh(X/2), X = 2 F_o D F_c / Sig."""
        r = self.refl
        fc = self.f_model(fcalc.detach()).abs()
        if self.ml is None:
            ones = torch.ones_like(fc)
            return ones, ones
        d = self.ml.d[r.bin_index]
        s = self.ml.s[r.bin_index]
        sig = torch.where(r.centric, r.epsilon * s + r.sigma_f ** 2, r.epsilon * s + 2 * r.sigma_f ** 2)
        x = 2.0 * r.f_obs * d * fc / sig
        m = torch.where(r.centric, torch.tanh(x / 2.0), torch.special.i1e(x) / torch.special.i0e(x))
        return m, d

