"""Validate an ensemble: the geometry gate and, against a reference, the distribution comparison.

:func:`validate` returns a :class:`ValidationReport` (geometry of the samples and of the
reference, the :class:`~equipoise.ensemble.metrics.EnsembleComparison` numbers, the gate);
:func:`gate` applies the quality bars of issue 10 to two plain dicts, so training, sampling and
the benchmark judge samples the same way:

| check | bar |
|---|---|
| bond RMSD | <= 0.02 Å |
| angle RMSD | <= the reference's own + 1 deg |
| Ramachandran outliers | <= the reference's own + 1 percentage point |
| clashes | <= 1 per 1000 atoms |
| chain breaks | none |
| mean pairwise RMSD | within 10% of the reference's |
| RMSF Pearson r | >= 0.9 |
| precision, recall (2 Å) | >= 0.9 each |
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from equipoise.ensemble.geometry import backbone_dihedrals, geometry_summary
from equipoise.ensemble.io import Ensemble
from equipoise.ensemble.metrics import EnsembleComparison
from equipoise.errors import InputError

__all__ = ["BARS", "gate", "validate", "ValidationReport", "write_plots", "write_json"]

#: quality bars of issue 10 (units in the names)
BARS: dict[str, float] = {"bond_rmsd_A": 0.02, "angle_rmsd_excess_deg": 1.0, "rama_outliers_excess": 0.01,
                          "clashes_per_1000_atoms": 1.0, "chain_breaks": 0, "pairwise_rmsd_rel_error": 0.10,
                          "rmsf_pearson": 0.9, "precision": 0.9, "recall": 0.9}


def _check(value: float, limit: float, passed: bool) -> dict:
    return {"value": value, "limit": limit, "passed": bool(passed)}


def gate(report: dict, reference_report: dict | None = None) -> dict:
    """The pass/fail table of a sample set against issue 10's bars.

    ``report``: ``{"geometry": geometry_summary(...), "distribution": EnsembleComparison.scalars()
    (optional)}`` of the samples; ``reference_report``: ``{"geometry": ...}`` of the reference
    (held-out) models, which sets the angle and Ramachandran bars (without it those two are not
    judged: ``passed`` None). Returns ``{"checks": {name:
    {"value", "limit", "passed"}}, "passed": all passed, "geometry_passed", "distribution_passed"}``.
    """
    geo = report["geometry"]
    ref = (reference_report or {}).get("geometry")
    checks = {"bond_rmsd_A": _check(geo["bond_rmsd_A"], BARS["bond_rmsd_A"], geo["bond_rmsd_A"] <= BARS["bond_rmsd_A"])}
    for name, excess in (("angle_rmsd_deg", "angle_rmsd_excess_deg"), ("rama_outliers", "rama_outliers_excess")):
        if ref is None:
            checks[name] = {"value": geo[name], "limit": None, "passed": None}  # relative bar: not judged
        else:
            limit = ref[name] + BARS[excess]
            checks[name] = _check(geo[name], limit, geo[name] <= limit)
    checks["clashes_per_1000_atoms"] = _check(geo["clashes_per_1000_atoms"], BARS["clashes_per_1000_atoms"],
                                              geo["clashes_per_1000_atoms"] <= BARS["clashes_per_1000_atoms"])
    checks["chain_breaks"] = _check(geo["chain_breaks"], BARS["chain_breaks"], geo["chain_breaks"] <= BARS["chain_breaks"])
    geometry_names = list(checks)
    dist = report.get("distribution")
    if dist:
        rel = abs(dist["pairwise_rmsd_ratio"] - 1.0)
        r = dist["rmsf_pearson"] if dist["rmsf_pearson"] is not None else float("nan")
        checks["pairwise_rmsd_rel_error"] = _check(rel, BARS["pairwise_rmsd_rel_error"], rel <= BARS["pairwise_rmsd_rel_error"])
        checks["rmsf_pearson"] = _check(r, BARS["rmsf_pearson"], r >= BARS["rmsf_pearson"])
        for name in ("precision", "recall"):
            checks[name] = _check(dist[name], BARS[name], dist[name] >= BARS[name])
    geometry_passed = all(checks[n]["passed"] is not False for n in geometry_names)
    distribution_passed = all(v["passed"] for k, v in checks.items() if k not in geometry_names) if dist else None
    return {"checks": checks, "geometry_passed": geometry_passed, "distribution_passed": distribution_passed,
            "passed": geometry_passed and (distribution_passed is not False)}


@dataclass
class ValidationReport:
    """What ``equipoise ensemble validate`` computes; ``to_dict()`` is its JSON."""

    samples: Ensemble
    geometry: dict
    reference: Ensemble | None = None
    reference_geometry: dict | None = None
    comparison: EnsembleComparison | None = None
    gate: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"samples": {"source": self.samples.source, "n_models": self.samples.n_models,
                           "n_res": self.samples.n_res, "sequence": self.samples.sequence},
               "geometry": self.geometry, "gate": self.gate}
        if self.reference is not None:
            out["reference"] = {"source": self.reference.source, "n_models": self.reference.n_models}
            out["reference_geometry"] = self.reference_geometry
            out["distribution"] = self.comparison.scalars() if self.comparison is not None else None
        return _finite(out)

    def summary(self) -> str:
        lines = [f"{self.samples.n_models} models x {self.samples.n_res} residues ({self.samples.source})"]
        for name, check in self.gate["checks"].items():
            lines.append(f"  {name:24s} {check['value']:10.4g}  limit {_format_limit(check['limit']):>8s}  "
                         f"{_verdict(check['passed'])}")
        g = self.geometry
        lines.append(f"Ramachandran favoured {100 * g['rama_favoured']:.1f}%, allowed {100 * g['rama_allowed']:.1f}%, "
                     f"outliers {100 * g['rama_outliers']:.1f}%; omega RMSD {g['omega_rmsd_deg']:.1f} deg, "
                     f"cis {100 * g['cis_fraction']:.1f}%; clashes {g['clashes']}")
        if self.comparison is not None:
            r = self.comparison.results
            lines.append(f"mean pairwise RMSD {r['mean_pairwise_rmsd_samples']:.2f} Å (reference "
                         f"{r['mean_pairwise_rmsd_reference']:.2f}); RMSF r {r['rmsf_pearson']:.3f}; precision "
                         f"{r['precision']:.2f}, recall {r['recall']:.2f}; Rg {r['rg_samples']:.2f} Å (reference "
                         f"{r['rg_reference']:.2f}); CA-CA W1 {r['ca_distance_w1']:.2f} Å, JS {r['ca_distance_js']:.4f}; "
                         f"PC1/PC2 W1 {r['pc_w1'][0]:.2f}/{r['pc_w1'][1]:.2f} Å")
        lines.append(f"gate: {'PASSED' if self.gate['passed'] else 'FAILED'}")
        return "\n".join(lines)


def _format_limit(limit: float | None) -> str:
    return "-" if limit is None else f"{limit:.4g}"


def _verdict(passed: bool | None) -> str:
    return "not judged" if passed is None else ("pass" if passed else "FAIL")


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def validate(samples: Ensemble, reference: Ensemble | None = None, threshold: float = 2.0) -> ValidationReport:
    """Geometry of ``samples`` and, with a ``reference`` of the same residues, the distribution
    comparison and the reference's own geometry; the gate of :func:`gate`."""
    if reference is not None and reference.n_res != samples.n_res:
        raise InputError(f"samples have {samples.n_res} residues, the reference {reference.n_res}",
                         path=reference.source or None)
    if reference is not None and reference.sequence != samples.sequence:
        raise InputError(f"samples' sequence {samples.sequence} differs from the reference's {reference.sequence}",
                         path=reference.source or None)
    geometry = geometry_summary(samples.coords.to(torch.float64), samples.mask, samples.sequence)
    report = ValidationReport(samples, geometry)
    if reference is not None:
        complete = samples.mask[..., :3].all() and reference.mask[..., :3].all()
        if not complete:
            raise InputError("the distribution comparison needs N, CA, C in every residue of every model",
                             path=reference.source or None)
        report.reference = reference
        report.reference_geometry = geometry_summary(reference.coords.to(torch.float64), reference.mask,
                                                     reference.sequence)
        report.comparison = EnsembleComparison(samples.coords, reference.coords, threshold=threshold).run()
        report.gate = gate({"geometry": geometry, "distribution": report.comparison.scalars()},
                           {"geometry": report.reference_geometry})
    else:
        report.gate = gate({"geometry": geometry})
    return report


def write_plots(report: ValidationReport, out_dir: str | Path) -> list[Path]:
    """PNG figures: Ramachandran of the samples (over the reference's), and with a reference the
    pairwise-RMSD histograms, per-residue RMSF and projections on the reference's PC1/PC2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the plot folder ({exc.strerror})", path=out_dir) from exc
    paths = []

    def rama(ens: Ensemble):
        phi, psi, _ = backbone_dihedrals(ens.coords.to(torch.float64))
        return torch.rad2deg(phi[:, :-1]).reshape(-1).numpy(), torch.rad2deg(psi[:, 1:]).reshape(-1).numpy()

    fig, ax = plt.subplots(figsize=(5, 5))
    if report.reference is not None:
        x, y = rama(report.reference)
        ax.scatter(x, y, s=2, c="0.7", label="reference")
    x, y = rama(report.samples)
    ax.scatter(x, y, s=2, c="tab:red", label="samples")
    ax.set(xlim=(-180, 180), ylim=(-180, 180), xlabel="phi (deg)", ylabel="psi (deg)", title="Ramachandran")
    ax.legend(loc="lower left", markerscale=4)
    paths.append(out_dir / "ramachandran.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    if report.comparison is not None:
        res = report.comparison.results
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.hist(res["pairwise_rmsd_hist_reference"].numpy(), bins=40, alpha=0.5, density=True, label="reference")
        ax.hist(res["pairwise_rmsd_hist_samples"].numpy(), bins=40, alpha=0.5, density=True, label="samples")
        ax.set(xlabel="pairwise CA RMSD (Å)", ylabel="density")
        ax.legend()
        paths.append(out_dir / "pairwise_rmsd.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(res["rmsf_reference"].numpy(), label="reference")
        ax.plot(res["rmsf_samples"].numpy(), label=f"samples (r = {res['rmsf_pearson']:.2f})")
        ax.set(xlabel="residue index", ylabel="CA RMSF (Å)")
        ax.legend()
        paths.append(out_dir / "rmsf.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(5, 5))
        pr, ps = res["projections_reference"].numpy(), res["projections_samples"].numpy()
        ax.scatter(pr[:, 0], pr[:, 1], s=8, label="reference")
        ax.scatter(ps[:, 0], ps[:, 1], s=8, label="samples")
        ax.set(xlabel="PC1 (Å RMS)", ylabel="PC2 (Å RMS)", title="projections on the reference's PCs")
        ax.legend()
        paths.append(out_dir / "pca.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_json(report: ValidationReport, path: str | Path) -> Path:
    """Write ``report.to_dict()`` as JSON (atomically)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise InputError(f"cannot write ({exc.strerror})", path=path) from exc
    return path
