"""Score a model against X-ray data without refining it: R-work, R-free, scales, bins, twinning.

``rfactor(model_path, data_path, labin=None, free=None, out=None)`` returns an ``RfactorResult``;
with ``out`` it writes ``summary.json``, ``maps.mtz`` (FWT/PHWT, DELFWT/PHDELWT) and ``run.log``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from equipoise.core.progress import Progress
from equipoise.errors import InputError


@dataclass
class RfactorResult:
    """R-factors of one model against one data set, with the scales and the per-bin table."""

    model: str
    data: str
    r_work: float
    r_free: float
    r_free_rescaled: float
    cc_work: float
    cc_free: float
    n_work: int
    n_free: int
    target: str
    target_work: float
    target_free: float
    d_min: float
    scales: dict
    shells: list[dict]
    twinning: dict | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """Readable multi-line summary: R values, scales, the shell table, notes."""
        s = self.scales
        lines = [f"{self.model} vs {self.data} (d_min {self.d_min:.2f} Å)",
                 f"R-work {self.r_work:.4f}  R-free {self.r_free:.4f}  CC-work {self.cc_work:.3f}  "
                 f"CC-free {self.cc_free:.3f}  ({self.n_work} work, {self.n_free} free)",
                 f"R-free with the free set rescaled by its own scale (as cctbx/phenix report it) "
                 f"{self.r_free_rescaled:.4f}",
                 f"{self.target} target: work {self.target_work:.5g}, free {self.target_free:.5g}",
                 f"bulk solvent k_sol {s['k_sol']:.3f}  B_sol {s['b_sol']:.1f} Å²; aniso B11 {s['b_aniso']['B11']:.2f} "
                 f"B22 {s['b_aniso']['B22']:.2f} B33 {s['b_aniso']['B33']:.2f} B12 {s['b_aniso']['B12']:.2f} "
                 f"B13 {s['b_aniso']['B13']:.2f} B23 {s['b_aniso']['B23']:.2f} Å²",
                 f"{'d range (Å)':>15} {'work':>6} {'free':>5} {'R-work':>7} {'R-free':>7} {'CC':>6} {'k':>7} {'sigmaA':>6}"]
        for row in self.shells:
            sa = "" if row["sigma_a"] is None else f"{row['sigma_a']:.3f}"
            lines.append(f"{row['d_max']:7.2f}-{row['d_min']:<7.2f} {row['n_work']:6d} {row['n_free']:5d} "
                         f"{row['r_work']:7.4f} {row['r_free']:7.4f} {row['cc_work']:6.3f} {row['k_bin']:7.4f} {sa:>6}")
        if self.twinning is not None:
            lines += [self.twinning["summary"], f"twinning: {self.twinning['verdict']}"]
            fit = self.twinning.get("twin_model")
            if fit is not None:
                lines.append(f"twinning: {fit['summary']}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def rfactor(model_path: str | Path, data_path: str | Path, *, labin: str | None = None, free: int | None = None,
            d_min: float | None = None, target: str = "ml", twinning: bool = True, out: str | Path | None = None,
            progress: str = "auto") -> RfactorResult:
    """Read, scale (bulk solvent, anisotropic, binned) and score; see module doc."""
    from equipoise.xtal.model import AtomModel
    from equipoise.xtal.reflections import Reflections
    from equipoise.xtal.twinning import add_twin_model, twin_statistics
    from equipoise.xtal.xray import XrayModel

    start = time.perf_counter()
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output directory: {exc}", path=out_dir) from exc
    prog = Progress(progress, 4, 0, None if out_dir is None else out_dir / "run.log")
    try:
        refl = Reflections.from_file(data_path, labin=labin, free=free, d_min=d_min)
        model = AtomModel.from_file(model_path)
        prog.event(refl.describe())
        for note in refl.notes:
            prog.event(note)
        xm = XrayModel(model, refl, target=target)
        for note in xm.notes:
            prog.event(note)
        prog.step(1, "read", 0, 1)
        with torch.no_grad():
            fc = xm.fcalc(model.xyz, model.b_iso, model.occ, model.u_aniso)
        prog.step(2, "structure factors", 0, 1)
        scales = xm.update_scales(fcalc=fc)
        stats = xm.r_factors(fc)
        with torch.no_grad():
            t_work, t_free = float(xm.target(fc)), float(xm.target(fc, free=True))
        prog.step(3, "scaling", 0, 1, t_work)
        twin = None
        if twinning:
            twin = twin_statistics(refl)
            prog.event(twin.summary())
            prog.event(twin.verdict())
            with torch.no_grad():
                fit = add_twin_model(twin, refl, xm.f_model(fc).abs())
            if fit is not None:
                prog.event(fit.summary())
        notes = list(refl.notes) + list(xm.notes) + list(scales.notes) + (list(xm.ml.notes) if xm.ml else [])
        result = RfactorResult(model=str(model_path), data=str(data_path), target=target, target_work=t_work,
                               target_free=t_free, d_min=refl.d_min, scales=scales.as_dict(), shells=xm.shells(fc),
                               twinning=None if twin is None else twin.as_dict(), notes=notes,
                               seconds=time.perf_counter() - start, **stats)
        if out_dir is not None:
            xm.write_maps(fc, out_dir / "maps.mtz")
            _write_json(out_dir / "summary.json", asdict(result))
        prog.step(4, "done", 0, 1, t_work)
        prog.event(f"R-work {result.r_work:.4f} R-free {result.r_free:.4f}")
    finally:
        prog.close()
    return result


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=float), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise InputError(f"cannot write: {exc}", path=path) from exc
