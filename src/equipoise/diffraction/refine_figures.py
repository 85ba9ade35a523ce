"""Figures of a refinement run a crystallographer reads (run_dir/plots/).

* ``images.png``: observed, refined model and residual (observed − model, diverging colour map
  centred on 0), in sqrt(photons) for the first two; the direct-beam position (+) and
  resolution rings labelled in Å on each panel.
* ``parameters.png``: each refined parameter against the step with its unit, one labelled line per
  component (misset x/y/z ...), dashed truth lines when the truth is known, stage starts marked.
* ``loss.png``: the data terms (log scale) against the step.

Shares and weights of the terms are not drawn: with one term per stage they are constant 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.pixels import beam_pixel, pixel_resolution_A

__all__ = ["draw_images", "draw_parameters", "draw_loss", "UNITS"]

#: record key -> (axis label, unit, component labels)
UNITS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mosaic_spread_deg": ("mosaic spread", "deg", ()),
    "misset_deg": ("misset", "deg", ("x", "y", "z")),
    "cell": ("cell", "Å / deg", ("a", "b", "c", "α", "β", "γ")),
    "n_cells": ("unit cells per axis", "cells", ("Na", "Nb", "Nc")),
    "distance_mm": ("distance", "mm", ()),
    "beam_center_mm": ("beam centre", "mm", ("Xbeam", "Ybeam")),
    "detector_rot_deg": ("detector rotation", "deg", ("x", "y", "z")),
    "twotheta_deg": ("two-theta", "deg", ()),
    "wavelength_A": ("wavelength", "Å", ()),
    "fluence": ("fluence", "photons/m²", ()),
    "scale": ("scale", "model units", ()),
    "background": ("background", "photons/pixel", ()),
}


def _rings(resolution: np.ndarray, count: int = 4) -> list[float]:
    """About ``count`` round resolutions (Å) spanning the detector."""
    finite = resolution[np.isfinite(resolution)]
    low, high = float(finite.max()), float(finite.min())
    candidates = [50, 30, 20, 15, 10, 8, 6, 5, 4, 3.5, 3, 2.5, 2, 1.8, 1.6, 1.5, 1.4, 1.2, 1.0, 0.9, 0.8]
    inside = [d for d in candidates if high < d < low]
    if len(inside) <= count:
        return inside
    picks = np.linspace(0, len(inside) - 1, count).round().astype(int)
    return [inside[i] for i in sorted(set(picks))]


def draw_images(observed: np.ndarray, model: np.ndarray, config: SimulationConfig, path: Path) -> Path:
    """observed / model / residual panels (module docstring); images (spixels, fpixels) photons."""
    from matplotlib.figure import Figure

    resolution = pixel_resolution_A(config)
    beam_s, beam_f = beam_pixel(config)
    residual = observed - model
    vmax = float(np.sqrt(max(np.percentile(observed, 99.9), observed.max() * 0.3, 1e-12)))
    rmax = float(max(np.percentile(np.abs(residual), 99.9), 1e-12))
    fig = Figure(figsize=(15, 5), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = ((np.sqrt(np.clip(observed, 0, None)), "observed (sqrt photons)", "magma", 0.0, vmax),
              (np.sqrt(np.clip(model, 0, None)), "refined model (sqrt photons)", "magma", 0.0, vmax),
              (residual, "observed − model (photons)", "RdBu_r", -rmax, rmax))
    rings = _rings(resolution)
    for ax, (image, title, cmap, lo, hi) in zip(axes, panels):
        shown = ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi, origin="upper", interpolation="nearest")
        fig.colorbar(shown, ax=ax, shrink=0.8)
        if rings:
            contour = ax.contour(resolution, levels=sorted(rings), colors="0.6", linewidths=0.7)
            ax.clabel(contour, fmt=lambda d: f"{d:g} Å", fontsize=7)
        ax.plot([beam_f], [beam_s], marker="+", color="cyan", markersize=12, label="direct beam")
        ax.set_xlim(-0.5, image.shape[1] - 0.5)
        ax.set_ylim(image.shape[0] - 0.5, -0.5)
        ax.set_title(title)
        ax.set_xlabel("fast pixel")
        ax.set_ylabel("slow pixel")
    axes[0].legend(loc="upper right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _entries(run_dir: Path) -> list[dict]:
    lines = (run_dir / "record.jsonl").read_text().splitlines()
    return [e for e in (json.loads(line) for line in lines if line.strip()) if "params" in e]


def _stage_starts(entries: list[dict]) -> list[tuple[int, str]]:
    return [(e["step"], e["stage"]) for e in entries if e.get("stage_step") == 0]


def draw_parameters(run_dir: Path, path: Path, truth: dict | None = None) -> Path | None:
    """Trajectories of the refined parameters from run_dir/record.jsonl; None when nothing was logged."""
    from matplotlib.figure import Figure

    entries = _entries(run_dir)
    if not entries:
        return None
    keys = [k for k in entries[0]["params"] if k in UNITS]
    fig = Figure(figsize=(5 * min(3, len(keys)), 3.4 * ((len(keys) + 2) // 3)), layout="constrained")
    steps = [e["step"] for e in entries]
    for i, key in enumerate(keys):
        label, unit, parts = UNITS[key]
        ax = fig.add_subplot((len(keys) + 2) // 3, min(3, len(keys)), i + 1)
        values = np.array([e["params"][key] for e in entries], dtype=np.float64)
        values = values.reshape(len(entries), -1)
        known = None if truth is None or key not in truth else np.ravel(truth[key])
        for j in range(values.shape[1]):
            name = f"{label} {parts[j]}" if j < len(parts) else label
            line, = ax.plot(steps, values[:, j], marker=".", markersize=3, label=name)
            if known is not None:
                ax.axhline(float(known[j]), color=line.get_color(), linestyle="--", linewidth=1,
                           label=f"{name} truth")
        for step, stage in _stage_starts(entries):
            ax.axvline(step, color="0.75", linewidth=0.8)
            ax.text(step, 1.0, f" {stage}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="0.4")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{label} ({unit})")
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def draw_loss(run_dir: Path, path: Path) -> Path | None:
    """The data terms (raw values, log scale) against the step; None when nothing was logged."""
    from matplotlib.figure import Figure

    entries = [e for e in _entries(run_dir) if "terms" in e]
    if not entries:
        return None
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    names = sorted({t for e in entries for t in e["terms"]})
    for name in names:
        points = [(e["step"], e["terms"][name]["raw"]) for e in entries if name in e["terms"]]
        ax.semilogy([s for s, _ in points], [max(v, 1e-300) for _, v in points], marker=".", label=name)
    for step, stage in _stage_starts(entries):
        ax.axvline(step, color="0.75", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("data term (Poisson deviance or ½ squares)")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
