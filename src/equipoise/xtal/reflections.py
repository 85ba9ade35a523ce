"""Observed reflection data: amplitudes, sigmas, free flags, resolution bins, from MTZ or SF-mmCIF.

``Reflections.from_file(path, labin=None, free=None)`` reads a file through gemmi, picks the
columns (amplitudes preferred, else intensities converted by French & Wilson 1978), detects the
free-flag convention from the flag counts and records every choice in ``notes`` (which the
commands print in their log). Everything is checked before any computation: finite values,
positive sigmas, a known space group and cell; ``check_model`` compares them with a model's.

Conventions: ``free`` is True for the test (free) set. ``d`` is the resolution in Å.
``epsilon`` is the statistical weight of each reflection (gemmi's ``epsilon_factor``, centring
included), ``centric`` the centric flag. Bins are equal-count shells in 1/d^2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import gemmi
import numpy as np
import torch

from equipoise.errors import InputError

#: Preferred amplitude labels (MTZ and SF-mmCIF), in order; then any column of type F.
AMPLITUDE_LABELS = ("FP", "F-obs", "FOBS", "F_obs", "FMEAN", "F", "F-obs-filtered", "F_meas_au")
#: Preferred intensity labels, in order; then any column of type J.
INTENSITY_LABELS = ("IMEAN", "I", "I-obs", "IOBS", "I_obs", "intensity_meas")
#: Free-flag labels, in order; then any integer column whose name contains "free".
FREE_LABELS = ("FreeR_flag", "FREE", "R-free-flags", "FreeRflag", "FREER", "pdbx_r_free_flag", "status")
#: Calculated / map columns that are never observations even though they are of type F.
_CALC_PATTERN = re.compile(r"^(F-?model|FC|FCALC|FWT|DELFWT|2FOFCWT|FOFCWT|F-?calc)", re.IGNORECASE)

#: SF-mmCIF ``_refln.`` tags and the MTZ column type they correspond to.
_CIF_TYPES = {
    "F_meas_au": "F", "F_meas_sigma_au": "Q", "intensity_meas": "J", "intensity_sigma": "Q",
    "pdbx_F_meas": "F", "pdbx_r_free_flag": "I", "status": "I",
    "pdbx_F_plus": "G", "pdbx_F_plus_sigma": "L", "pdbx_F_minus": "G", "pdbx_F_minus_sigma": "L",
    "pdbx_I_plus": "K", "pdbx_I_plus_sigma": "M", "pdbx_I_minus": "K", "pdbx_I_minus_sigma": "M",
}
#: MTZ types of anomalous observations (F(+)/F(-), I(+)/I(-)) -> (their sigma type, the merged
#: column's type)
_ANOMALOUS_TYPES = {"G": ("L", "F"), "K": ("M", "J")}


@dataclass
class Reflections:
    """Observed amplitudes at unique Miller indices, with free flags and resolution bins.

    Attributes
    ----------
    hkl: (m, 3) int64 Miller indices.
    f_obs: (m,) float64 observed amplitudes (French–Wilson estimates when read from intensities).
    sigma_f: (m,) float64 their standard deviations (> 0).
    free: (m,) bool, True for the free (test) set.
    d: (m,) float64 resolution in Å.
    centric: (m,) bool centric flags.
    epsilon: (m,) float64 statistical weights (epsilon factors, centring included).
    bin_index: (m,) int64 resolution bin of each reflection, 0 = lowest resolution.
    n_bins: number of bins.
    cell, spacegroup: from the data file.
    path: the file read; labels: the columns used (amplitude, sigma, free); free_convention:
        how the flag was read (e.g. ``"CCP4 (0 = free)"``); notes: every choice made, for the log.
    from_intensities: True when ``f_obs`` came from French–Wilson.
    i_obs, sigma_i: (m,) float64 the measured intensities and their sigmas when the file has
        them (those read, before French–Wilson, or a column beside the amplitudes used; may be
        negative), else None.
    """

    hkl: torch.Tensor
    f_obs: torch.Tensor
    sigma_f: torch.Tensor
    free: torch.Tensor
    d: torch.Tensor
    centric: torch.Tensor
    epsilon: torch.Tensor
    bin_index: torch.Tensor
    n_bins: int
    cell: gemmi.UnitCell
    spacegroup: gemmi.SpaceGroup
    path: str | None = None
    labels: list[str] = field(default_factory=list)
    free_convention: str = ""
    notes: list[str] = field(default_factory=list)
    from_intensities: bool = False
    i_obs: torch.Tensor | None = None
    sigma_i: torch.Tensor | None = None

    @property
    def n(self) -> int:
        """Number of reflections."""
        return int(self.hkl.shape[0])

    @property
    def d_min(self) -> float:
        """High-resolution limit (Å)."""
        return float(self.d.min())

    @property
    def d_max(self) -> float:
        """Low-resolution limit (Å)."""
        return float(self.d.max())

    @property
    def work(self) -> torch.Tensor:
        """(m,) bool, True for the working set."""
        return ~self.free

    @classmethod
    def from_file(cls, path: str | Path, *, labin: str | None = None, free: int | None = None,
                  d_min: float | None = None, d_max: float | None = None, n_bins: int | None = None,
                  device: torch.device | str = "cpu") -> "Reflections":
        """Read MTZ (``.mtz``, ``.mtz.gz``) or SF-mmCIF (``.cif``, ``.ent``, gzipped too).

        labin: ``"FP,SIGFP[,FREE]"`` (or ``"IMEAN,SIGIMEAN[,FREE]"``) to override auto-detection.
        free: the flag value that marks the free set (overrides detection).
        d_min, d_max: resolution limits in Å. n_bins: number of bins (default from the free count).
        """
        path = Path(path)
        if not path.exists():
            raise InputError("reflection file not found", path=path)
        columns, cell, spacegroup = _read_columns(path)
        return _from_columns(path, columns, cell, spacegroup, labin=labin, free=free, d_min=d_min,
                             d_max=d_max, n_bins=n_bins, device=torch.device(device))

    def select(self, mask: torch.Tensor) -> "Reflections":
        """The reflections where ``mask`` (m,) bool is True, bins recomputed on the subset."""
        keep = mask.to(torch.bool)
        sub = replace(self, hkl=self.hkl[keep], f_obs=self.f_obs[keep], sigma_f=self.sigma_f[keep],
                      free=self.free[keep], d=self.d[keep], centric=self.centric[keep],
                      epsilon=self.epsilon[keep], notes=list(self.notes),
                      i_obs=None if self.i_obs is None else self.i_obs[keep],
                      sigma_i=None if self.sigma_i is None else self.sigma_i[keep])
        sub.bin_index, sub.n_bins = resolution_bins(sub.d, sub.free, None)
        return sub

    def check_model(self, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup | None,
                    model_path: str | Path | None = None, *, rel_tol: float = 0.01,
                    angle_tol_deg: float = 1.0) -> None:
        """Raise ``InputError`` unless the model's cell and space group agree with the data's.

        Lengths must agree within ``rel_tol`` (relative) and angles within ``angle_tol_deg``.
        """
        if spacegroup is None:
            raise InputError("the model has no space group (CRYST1 / _symmetry); the data say "
                             f"{self.spacegroup.hm}", path=model_path, field="space group")
        if not (spacegroup.operations().has_same_rotations(self.spacegroup.operations())
                and spacegroup.number == self.spacegroup.number
                and sorted(str(op) for op in spacegroup.operations()) ==
                sorted(str(op) for op in self.spacegroup.operations())):
            raise InputError(f"model space group {spacegroup.hm!r} differs from the data's "
                             f"{self.spacegroup.hm!r} ({self.path})", path=model_path, field="space group")
        mine, theirs = self.cell.parameters, cell.parameters
        for i, name in enumerate(("a", "b", "c")):
            if abs(mine[i] - theirs[i]) > rel_tol * mine[i]:
                raise InputError(f"model cell {name} = {theirs[i]:.3f} Å differs from the data's "
                                 f"{mine[i]:.3f} Å ({self.path}) by more than {100 * rel_tol:g}%",
                                 path=model_path, field=f"cell {name}")
        for i, name in enumerate(("alpha", "beta", "gamma")):
            if abs(mine[3 + i] - theirs[3 + i]) > angle_tol_deg:
                raise InputError(f"model cell {name} = {theirs[3 + i]:.2f} deg differs from the data's "
                                 f"{mine[3 + i]:.2f} deg ({self.path})", path=model_path, field=f"cell {name}")

    def describe(self) -> str:
        """One line for the log: file, columns, counts, resolution, free convention."""
        kind = "intensities -> French-Wilson amplitudes" if self.from_intensities else "amplitudes"
        return (f"{self.path}: {','.join(self.labels)} ({kind}); {self.n} reflections, "
                f"{int(self.free.sum())} free [{self.free_convention}], "
                f"{self.d_max:.2f}-{self.d_min:.2f} Å, {self.spacegroup.hm}, {self.n_bins} bins")


def equal_count_shells(d: np.ndarray, n_shells: int, min_per_shell: int = 1) -> tuple[np.ndarray, int]:
    """Equal-count shells in 1/d^2, lowest resolution 0: ((m,) int64 shell index, number of shells).

    d: (m,) resolution (Å). The number of shells is ``n_shells``, reduced so that each holds at
    least ``min_per_shell`` reflections (at least one shell).
    """
    m = int(d.shape[0])
    n = max(1, min(n_shells, m // min_per_shell))
    shell = np.empty(m, dtype=np.int64)
    shell[np.argsort(1.0 / np.asarray(d, dtype=np.float64) ** 2, kind="stable")] = (np.arange(m) * n) // max(m, 1)
    return shell, n


def resolution_bins(d: torch.Tensor, free: torch.Tensor, n_bins: int | None) -> tuple[torch.Tensor, int]:
    """Equal-count bins in 1/d^2, low resolution first: ((m,) int64 bin index on d's device, number
    of bins).

    The default number keeps >= 40 free reflections per bin (sigmaA is estimated from the free
    set), >= 100 reflections per bin, and at most 20 bins.
    """
    m = int(d.shape[0])
    if n_bins is None:
        n_bins = max(1, min(20, int(free.sum()) // 40, m // 100))
    index, n = equal_count_shells(d.detach().cpu().numpy(), n_bins)
    return torch.from_numpy(index).to(d.device), n


def _read_columns(path: Path) -> tuple[dict[str, tuple[str, np.ndarray]], gemmi.UnitCell, gemmi.SpaceGroup]:
    """{label: (MTZ column type, float64 array)} plus "H","K","L", the cell and the space group."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".mtz"):
        try:
            mtz = gemmi.read_mtz_file(str(path))
        except (RuntimeError, ValueError) as err:
            raise InputError(f"cannot read MTZ: {err}", path=path) from err
        if mtz.spacegroup is None:
            raise InputError("MTZ has no space group", path=path, field="SYMINF")
        data = np.array(mtz, copy=False).astype(np.float64)
        columns = {c.label: (c.type, data[:, i]) for i, c in enumerate(mtz.columns)}
        return columns, mtz.cell, mtz.spacegroup
    try:
        blocks = gemmi.as_refln_blocks(gemmi.cif.read(str(path)))
    except (RuntimeError, ValueError) as err:
        raise InputError(f"cannot read SF-mmCIF: {err}", path=path) from err
    blocks = [b for b in blocks if b.default_loop is not None and b.is_merged()] if blocks else []
    if not blocks:
        raise InputError("no merged _refln loop (expected MTZ or SF-mmCIF)", path=path, field="_refln")
    block = blocks[0]
    if block.spacegroup is None:
        raise InputError("SF-mmCIF has no space group", path=path, field="_symmetry.space_group_name_H-M")
    hkl = np.asarray(block.make_miller_array(), dtype=np.float64)
    columns: dict[str, tuple[str, np.ndarray]] = {
        "H": ("H", hkl[:, 0]), "K": ("H", hkl[:, 1]), "L": ("H", hkl[:, 2])}
    for tag in block.column_labels():
        if tag == "status":
            status = np.array([gemmi.cif.as_string(v) for v in block.block.find_values("_refln.status")])
            columns[tag] = ("I", np.where(status == "f", 1.0, np.where(status == "o", 0.0, np.nan)))
        elif tag in _CIF_TYPES:
            columns[tag] = (_CIF_TYPES[tag], np.asarray(block.make_float_array(tag), dtype=np.float64))
    return columns, block.cell, block.spacegroup


def _pick(columns: dict[str, tuple[str, np.ndarray]], kind: str, preferred: tuple[str, ...]) -> str | None:
    for label in preferred:
        if label in columns and columns[label][0] == kind:
            return label
    for label, (ctype, _) in columns.items():
        if ctype == kind and not _CALC_PATTERN.match(label):
            return label
    return None


def _sigma_for(columns: dict[str, tuple[str, np.ndarray]], label: str) -> str | None:
    """The sigma column of ``label``: SIG<label>, SIG-<label>, the cif pair, or the next Q column."""
    candidates = [f"SIG{label}", f"SIG-{label}", f"SIG{label.replace('-obs', '')}-obs",
                  label.replace("F-obs", "SIGF-obs").replace("I-obs", "SIGI-obs"),
                  {"F_meas_au": "F_meas_sigma_au", "intensity_meas": "intensity_sigma"}.get(label, "")]
    for c in candidates:
        if c in columns and columns[c][0] == "Q":
            return c
    labels = list(columns)
    for later in labels[labels.index(label) + 1:]:
        if columns[later][0] == "Q":
            return later
    return None


def _free_label(columns: dict[str, tuple[str, np.ndarray]]) -> str | None:
    for label in FREE_LABELS:
        if label in columns and columns[label][0] == "I":
            return label
    for label, (ctype, _) in columns.items():
        if ctype == "I" and "free" in label.lower():
            return label
    return None


def _free_flags(values: np.ndarray, override: int | None, path: Path, label: str) -> tuple[np.ndarray, str]:
    """(bool free mask, convention text) from flag values (NaN = missing, treated as work)."""
    finite = np.isfinite(values)
    if override is not None:
        mask = finite & (values == override)
        if not mask.any():
            raise InputError(f"no reflection has free flag {override}", path=path, field=label)
        return mask, f"free = {override} (given)"
    flags, counts = np.unique(values[finite].astype(np.int64), return_counts=True)
    if flags.size < 2:
        raise InputError(f"free-flag column has a single value {flags.tolist()}; pass --free N "
                         "or choose another column with --labin", path=path, field=label)
    if flags.size == 2:
        rare = int(flags[np.argmin(counts)])
        name = {0: "CCP4 (0 = free)", 1: "phenix (1 = free)"}.get(rare, f"{rare} = free (rarer of two)")
        return finite & (values == rare), name + f", detected from counts {dict(zip(flags.tolist(), counts.tolist()))}"
    # CCP4 style: flags 0..N-1 spread evenly, 0 is the test set
    if 0 not in flags:
        raise InputError(f"free-flag values {flags.tolist()[:6]}... do not include 0; pass --free N",
                         path=path, field=label)
    return finite & (values == 0), f"CCP4 (0 = free), {flags.size} flag values"


def _from_columns(path: Path, columns: dict[str, tuple[str, np.ndarray]], cell: gemmi.UnitCell,
                  spacegroup: gemmi.SpaceGroup, *, labin: str | None, free: int | None,
                  d_min: float | None, d_max: float | None, n_bins: int | None,
                  device: torch.device) -> Reflections:
    notes: list[str] = []
    if labin is not None:
        parts = [p.strip() for p in labin.split(",") if p.strip()]
        if len(parts) not in (2, 3):
            raise InputError(f"--labin {labin!r}: expected OBS,SIGOBS[,FREE]", field="--labin")
        for p in parts:
            if p not in columns:
                raise InputError(f"column {p!r} not in the file (has {', '.join(columns)})", path=path, field="--labin")
        obs, sig = parts[0], parts[1]
        flag = parts[2] if len(parts) == 3 else _free_label(columns)
        if columns[obs][0] not in ("F", "J"):
            raise InputError(f"column {obs!r} has type {columns[obs][0]!r}; expected F (amplitude) "
                             "or J (intensity)", path=path, field="--labin")
        notes.append(f"columns from --labin: {labin}")
    else:
        obs = _pick(columns, "F", AMPLITUDE_LABELS) or _pick(columns, "J", INTENSITY_LABELS)
        if obs is None:
            obs = _merge_friedel_pairs(columns, spacegroup, notes)
        if obs is None:
            raise InputError(f"no amplitude (type F), intensity (type J) or anomalous pair (F(+)/F(-), "
                             f"I(+)/I(-)) column among {', '.join(columns)}; use --labin", path=path,
                             field="--labin")
        sig = _sigma_for(columns, obs)
        if sig is None:
            raise InputError(f"no sigma column for {obs!r}; use --labin", path=path, field="--labin")
        flag = _free_label(columns)
        notes.append(f"columns detected: {obs}, {sig}" + (f", {flag}" if flag else ""))
    intensities = columns[obs][0] == "J"
    hkl = np.stack([columns["H"][1], columns["K"][1], columns["L"][1]], axis=1)
    values, sigmas = columns[obs][1], columns[sig][1]
    infinite = np.isinf(values)
    if infinite.any():
        i = int(np.flatnonzero(infinite)[0])
        raise InputError(f"{int(infinite.sum())} infinite values (first: hkl {hkl[i].astype(int).tolist()})",
                         path=path, field=obs)
    present = np.isfinite(values)
    if not present.any():
        raise InputError("no reflection has a value", path=path, field=obs)
    bad_sigma = present & ~(np.isfinite(sigmas) & (sigmas > 0))
    if bad_sigma.any():
        i = int(np.flatnonzero(bad_sigma)[0])
        raise InputError(f"{int(bad_sigma.sum())} reflections have a missing, non-finite or non-positive "
                         f"sigma (first: hkl {hkl[i].astype(int).tolist()}, sigma {sigmas[i]})",
                         path=path, field=sig)
    if not intensities and (values[present] < 0).any():
        raise InputError(f"{int((values[present] < 0).sum())} negative amplitudes", path=path, field=obs)
    if (~present).any():
        notes.append(f"{int((~present).sum())} reflections without {obs} dropped")
    if flag is None:
        raise InputError("no free-flag column found; give one with --labin OBS,SIGOBS,FREE "
                         "(R-free needs a test set)", path=path, field="free flag")
    free_mask, convention = _free_flags(columns[flag][1], free, path, flag)
    notes.append(f"free flags {flag}: {convention}")
    keep = present.copy()
    d_all = np.asarray(cell.calculate_d_array(hkl.astype(np.int32)), dtype=np.float64)
    if d_min is not None:
        keep &= d_all >= d_min
    if d_max is not None:
        keep &= d_all <= d_max
    ops = spacegroup.operations()
    hkl_int = hkl.astype(np.int32)
    absent = np.asarray(ops.systematic_absences(hkl_int), dtype=bool) | (np.abs(hkl).sum(axis=1) == 0)
    if (absent & keep).any():
        notes.append(f"{int((absent & keep).sum())} systematically absent reflections dropped")
    keep &= ~absent
    if not keep.any():
        raise InputError("no reflection left after resolution limits", path=path, field="--resolution")
    hkl_int = hkl_int[keep]
    centric = np.asarray(ops.centric_flag_array(hkl_int), dtype=bool)
    epsilon = np.asarray(ops.epsilon_factor_array(hkl_int), dtype=np.float64)
    d = d_all[keep]
    values, sigmas = values[keep], sigmas[keep]
    i_obs, sigma_i = (values, sigmas) if intensities else _intensities_beside(columns, keep)
    if i_obs is not None and not intensities:
        notes.append("intensities beside the amplitudes kept for the intensity statistics (twinning)")
    if intensities:
        values, sigmas = french_wilson(values, sigmas, d, centric, epsilon)
        notes.append("amplitudes from intensities by French & Wilson (1978), Wilson prior per shell")
    t = lambda a, dt=torch.float64: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)  # noqa: E731
    free_t = t(free_mask[keep], torch.bool)
    d_t = t(d)
    bin_index, nb = resolution_bins(d_t, free_t, n_bins)
    return Reflections(hkl=t(hkl_int, torch.int64), f_obs=t(values), sigma_f=t(sigmas), free=free_t, d=d_t,
                       centric=t(centric, torch.bool), epsilon=t(epsilon), bin_index=bin_index, n_bins=nb,
                       cell=cell, spacegroup=spacegroup, path=str(path), labels=[obs, sig, flag],
                       free_convention=convention, notes=notes, from_intensities=intensities,
                       i_obs=None if i_obs is None else t(i_obs), sigma_i=None if sigma_i is None else t(sigma_i))


def _friedel_partner(label: str) -> str:
    """The (-) label of a (+) one: ``F(+)`` -> ``F(-)``, ``pdbx_I_plus`` -> ``pdbx_I_minus``."""
    return label.replace("(+)", "(-)").replace("plus", "minus").replace("PLUS", "MINUS")


def _anomalous_sigma(columns: dict[str, tuple[str, np.ndarray]], label: str, kind: str) -> str | None:
    """The sigma column (of MTZ type ``kind``) of an anomalous column: SIG<label>, the cif
    ``<label>_sigma``, or the next column of that type."""
    for c in (f"SIG{label}", f"{label}_sigma"):
        if c in columns and columns[c][0] == kind:
            return c
    labels = list(columns)
    for later in labels[labels.index(label) + 1:]:
        if columns[later][0] == kind:
            return later
    return None


def _merge_friedel_pairs(columns: dict[str, tuple[str, np.ndarray]], spacegroup: gemmi.SpaceGroup,
                         notes: list[str]) -> str | None:
    """For data with only anomalous pairs: add the inverse-variance weighted mean of each row's
    (+) and (-) observation as a column ``F(+/-)`` or ``I(+/-)`` with its sigma ``SIG...``
    (one of the two where only one is measured; the (+) one for centric reflections, where the
    two are the same measurement). Amplitudes first, as for mean columns. Returns the new label,
    or None when the file has no complete pair."""
    hkl = np.stack([columns["H"][1], columns["K"][1], columns["L"][1]], axis=1).astype(np.int32)
    centric = np.asarray(spacegroup.operations().centric_flag_array(hkl), dtype=bool)
    for kind, (sig_kind, merged_kind) in _ANOMALOUS_TYPES.items():
        for plus, (ctype, _) in list(columns.items()):
            minus = _friedel_partner(plus)
            if ctype != kind or minus == plus or columns.get(minus, ("",))[0] != kind:
                continue
            sp, sm = _anomalous_sigma(columns, plus, sig_kind), _anomalous_sigma(columns, minus, sig_kind)
            if sp is None or sm is None or sp == sm:
                continue
            v = np.stack([columns[plus][1], columns[minus][1]])
            sig = np.stack([columns[sp][1], columns[sm][1]])
            ok = np.isfinite(v) & np.isfinite(sig) & (sig > 0)
            ok[1] &= ~(centric & ok[0])
            w = np.where(ok, 1.0 / np.where(ok, sig, 1.0) ** 2, 0.0)
            total = w.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(total > 0, (w * np.where(ok, v, 0.0)).sum(axis=0) / total, np.nan)
                sigma = np.where(total > 0, 1.0 / np.sqrt(total), np.nan)
            label = "F(+/-)" if merged_kind == "F" else "I(+/-)"
            columns[label], columns["SIG" + label] = (merged_kind, mean), ("Q", sigma)
            notes.append(f"only anomalous pairs in the file: {label} = inverse-variance weighted mean of "
                         f"{plus} and {minus} ({int(ok.all(axis=0).sum())} rows with both, "
                         f"{int((ok.sum(axis=0) == 1).sum())} with one; centric rows take {plus})")
            return label
    return None


def _intensities_beside(columns: dict[str, tuple[str, np.ndarray]],
                        keep: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(I, sigma I) at the ``keep`` rows from an intensity column next to the amplitudes used,
    or (None, None) when there is none or some kept row lacks a value or a positive sigma."""
    label = _pick(columns, "J", INTENSITY_LABELS)
    sig = None if label is None else _sigma_for(columns, label)
    if label is None or sig is None:
        return None, None
    values, sigmas = columns[label][1][keep], columns[sig][1][keep]
    if not (np.isfinite(values).all() and np.isfinite(sigmas).all() and (sigmas > 0).all()):
        return None, None
    return values, sigmas


def french_wilson(i_obs: np.ndarray, sigma_i: np.ndarray, d: np.ndarray, centric: np.ndarray,
                  epsilon: np.ndarray, *, n_shells: int = 20, n_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean amplitude and its sigma from intensities (French & Wilson 1978, Acta A34, 517).

    Prior: Wilson's distribution with mean intensity ``epsilon * Sigma(shell)``, Sigma the mean of
    I/epsilon per equal-count shell in 1/d^2 (floored at a small positive value); acentric
    p(F) = 2F/S exp(-F^2/S), centric p(F) = sqrt(2/(pi S)) exp(-F^2/(2S)), S = epsilon Sigma.
    Likelihood: Gaussian in I. The posterior moments E[F], E[F^2] are integrated numerically in F
    on ``n_points`` points up to sqrt(max(I, 0) + 8 sigma). Returns (F, sigma_F), both (m,).
    """
    m = i_obs.shape[0]
    shell, n_shells = equal_count_shells(d, n_shells, min_per_shell=50)
    sigma_shell = np.array([np.mean(i_obs[shell == s] / epsilon[shell == s]) for s in range(n_shells)])
    floor = max(1e-6, 1e-3 * float(np.abs(sigma_shell).max()))
    s_prior = epsilon * np.maximum(sigma_shell[shell], floor)
    f_out = np.empty(m)
    sig_out = np.empty(m)
    for start in range(0, m, 4096):
        sl = slice(start, start + 4096)
        i, s, sp, cen = i_obs[sl], sigma_i[sl], s_prior[sl], centric[sl]
        f_max = np.sqrt(np.maximum(i, 0.0) + 8.0 * s)[:, None]
        f = f_max * np.linspace(0.0, 1.0, n_points)[None, :]
        j = f * f
        log_like = -0.5 * ((i[:, None] - j) / s[:, None]) ** 2
        log_prior = np.where(cen[:, None], -j / (2.0 * sp[:, None]),
                             np.log(np.maximum(f, 1e-300)) - j / sp[:, None])
        log_post = log_like + log_prior
        w = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        w[:, 0] *= 0.5
        w[:, -1] *= 0.5
        norm = w.sum(axis=1)
        mean_f = (w * f).sum(axis=1) / norm
        mean_j = (w * j).sum(axis=1) / norm
        f_out[sl] = mean_f
        sig_out[sl] = np.sqrt(np.maximum(mean_j - mean_f ** 2, 1e-12))
    return f_out, sig_out

