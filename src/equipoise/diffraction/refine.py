"""Refinement of crystal, beam and detector parameters against one still diffraction image.

The model image is ``scale · simulate(config, params) + background`` (photons/pixel, shape
(spixels, fpixels)) where ``params`` are the refined simulator parameters in user units (names of
docs/diffraction.md, "Python API"), each the image of an unconstrained variable under a smooth transform
(:mod:`equipoise.diffraction.transforms`). The fit is an :class:`equipoise.core.Fit`:

* terms: ``data`` (Poisson deviance or least squares over the unmasked pixels), optionally
  ``data_coarse`` (the same on both images blurred by a Gaussian of ``coarse_blur_px`` pixels,
  fitted in the first stage: a smoother landscape; its measured effect is in docs/refinement.md) and ``cell_restraint`` (a weak Gaussian prior
  of the cell toward its starting value, when the cell is refined);
* stages (:func:`plan_stages`): the misset first, then everything (``orient``, default), the full
  release misset → mosaic → cell → detector → all (``staged``), or one stage (``joint``); L-BFGS
  with a strong-Wolfe line search; stages with several terms are balanced with
  :class:`~equipoise.core.GradNormRatioBalancer` (reference ``data``) on exactly their free
  parameters, at each stage start;
* optionally (``search``) an orientation search before the stages: the misset of lowest loss on
  a grid around the start, with broadened spots (:mod:`equipoise.diffraction.orientation_search`),
  which widens the capture range of the misset from ~4-10° to the grid's radius.

The Poisson data term is the deviance ``Σ_p w_p [μ_p − y_p + y_p log(y_p/μ_p)]`` with
``μ = model + ε`` and ``y = observed + ε`` (ε = 1e-3 × mean observed photons/pixel, so that
pixels the lattice transform leaves at exactly zero stay finite): the Poisson negative
log-likelihood minus its value at a perfect fit, hence zero at a perfect fit and comparable
between starts.

See docs/refinement.md for the command line, the Python API and measured capture ranges.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from equipoise.core import Balancer, Fit, FitResult, FixedBalancer, GradNormRatioBalancer, Stage, Term, plot_run
from equipoise.diffraction import io
from equipoise.diffraction.config import SimulationConfig
from equipoise.diffraction.crystal import mosaic_domain_count, mosaic_domains_needed
from equipoise.diffraction.geometry import detector_geometry, detector_size
from equipoise.diffraction.fit_quality import assess_fit
from equipoise.diffraction.orientation_search import search_misset
from equipoise.diffraction.pixels import pixel_resolution_A, select_pixels
from equipoise.diffraction.refine_figures import draw_images, draw_loss, draw_parameters
from equipoise.diffraction.run_settings import fingerprint, note_interrupt, prepare_run_dir
from equipoise.diffraction.simulate import Simulator
from equipoise.diffraction.sources import fluence as resolved_fluence
from equipoise.diffraction.sources import wavelength_m
from equipoise.diffraction.transforms import Above, CubicCell, Interval, Positive, Shift, Split, Transform
from equipoise.diffraction.uncertainty import standard_errors, undetermined
from equipoise.errors import InputError

__all__ = ["REFINABLE", "LOSSES", "ImageModel", "RefineResult", "refine", "parse_refine", "load_image",
           "plan_stages", "capture_stages", "poisson_deviance", "least_squares", "image_shape", "starting_config", "evaluate_loss"]

#: ``--refine`` name -> key of the refined value (user units) in params and summaries
REFINABLE: dict[str, str] = {
    "mosaic": "mosaic_spread_deg",
    "misset": "misset_deg",
    "cell": "cell",
    "ncells": "n_cells",
    "distance": "distance_mm",
    "beam_center": "beam_center_mm",
    "detector_rotation": "detector_rot_deg",
    "twotheta": "twotheta_deg",
    "wavelength": "wavelength_A",
    "fluence": "fluence",
    "scale": "scale",
    "background": "background",
}
#: parameters of the image model rather than of the simulator
IMAGE_LEVEL = ("scale", "background")
LOSSES = ("poisson", "lsq")
#: image-intensity groups, free in every stage
INTENSITY = ("scale", "background", "fluence")
#: staged release: each stage frees its own groups (and the intensity groups), then ``all`` frees all
RELEASE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("orient", ("misset",)),
    ("mosaic", ("mosaic", "ncells")),
    ("cell", ("cell", "wavelength")),
    ("detector", ("distance", "beam_center", "detector_rotation", "twotheta")),
)
#: stage plans: "capture" (default, :func:`capture_stages` on strong-pixel subsets) and those of :func:`plan_stages`
STRATEGIES = ("capture", "orient", "staged", "joint")
#: the default orientation search of the capture strategy: (radius, step) deg around the start
AUTO_SEARCH = (12.0, 4.0)
#: upper bound (deg) of the refined mosaic spread: at least this, or twice the start
MOSAIC_MAX_DEG = 5.0
#: mosaic domains (at least) of the model in the capture plan's final stage ``all`` when the spread is
#: refined. A crystal's mosaic is smooth; a 10-domain set splits a spread of 1–2° into sub-spots that lie
#: several spot widths apart at 0.35 Å⁻¹ (spot width ~1/(N·a) = 0.002 Å⁻¹), so the fit moves the
#: orientation to match them (capture table, docs/refinement.md: 10 → 30 domains turned the 512² misses
#: at 1.3–1.6° into hits). The orientation stages keep the configured count: the spread is fixed there.
FINAL_MOSAIC_DOMAINS = 30
#: relative change per unit of u for cell lengths, distance and wavelength (1 %)
RELATIVE_STEP = 0.01
#: Poisson floor ε relative to the mean observed photons/pixel (see module docstring)
POISSON_FLOOR = 1e-3
#: lattice constraints of the refined cell: none (6 free values) or cubic (one length, 90° angles)
CELL_CONSTRAINTS = ("none", "cubic")


def parse_refine(names: str | Sequence[str]) -> list[str]:
    """``"mosaic,misset"`` or a sequence of names -> validated list in canonical order.

    InputError (field ``--refine``) naming the unknown names and listing the valid ones.
    """
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    items = [n for n in items if n]
    unknown = [n for n in items if n not in REFINABLE]
    if unknown:
        raise InputError(f"unknown parameter(s) {unknown}; valid names are {', '.join(REFINABLE)}",
                         field="--refine")
    if not items:
        raise InputError(f"nothing to refine; choose from {', '.join(REFINABLE)}", field="--refine")
    return [n for n in REFINABLE if n in items]


# ----------------------------------------------------------------------------------- images
def load_image(path: str | Path, shape: tuple[int, int], what: str = "image") -> np.ndarray:
    """Read an observed image (or mask) of ``shape`` = (spixels, fpixels) as float64.

    ``.npy`` arrays, SMV files (``.img``, ``.smv``, ``.cbf``-less ADSC) and raw little-endian
    float32 (anything else, ``.gz`` allowed). InputError naming the file for a shape that does not
    match the geometry flags (expected vs found) or for NaN/Inf pixels.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file not found", path=p)
    suffix = p.suffix.lower()
    slow, fast = shape
    if suffix == ".npy":
        data = io.read_npy(p)
    elif suffix in (".img", ".smv"):
        data = io.read_smv(p)[1]
    else:
        size = p.stat().st_size if suffix != ".gz" else None
        if size is not None and size != slow * fast * 4:
            raise InputError(f"{what} size mismatch: the geometry flags give {fast}x{slow} pixels (fast x slow), "
                             f"i.e. {slow * fast * 4} bytes of raw float32; found {size} bytes "
                             f"({size / 4:g} floats)", path=p)
        data = io.read_raw_float32(p, shape)
    if data.shape != (slow, fast):
        raise InputError(f"{what} shape mismatch: the geometry flags give (slow, fast) = {(slow, fast)}, "
                         f"found {tuple(data.shape)}", path=p)
    data = np.asarray(data, dtype=np.float64)
    bad = ~np.isfinite(data)
    if bad.any():
        s, f = np.argwhere(bad)[0]
        raise InputError(f"{what} has {int(bad.sum())} NaN/Inf pixel(s), first at (slow {s}, fast {f}); "
                         "expected finite photons/pixel", path=p)
    return data


# ----------------------------------------------------------------------------------- model
def _gaussian_blur(image: Tensor, sigma_px: float) -> Tensor:
    """Separable Gaussian blur (truncated at 3σ, zero padding) of a (S, F) image."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    img = image.reshape(1, 1, *image.shape)
    img = torch.nn.functional.conv2d(img, kernel.reshape(1, 1, 1, -1), padding=(0, radius))
    img = torch.nn.functional.conv2d(img, kernel.reshape(1, 1, -1, 1), padding=(radius, 0))
    return img.reshape(image.shape)


class ImageModel:
    """Model image ``scale · Simulator(config)(params(u)) + background`` of the refined names.

    ``config`` gives the fixed model and the starting values (it must have a mosaic spread > 0 when
    ``mosaic`` is refined: the spread fixes the number of domains). ``variables`` holds one leaf
    tensor (unconstrained, dtype/device of the model) per refined name; ``params()`` maps them to
    user units. ``background_start`` (photons/pixel) is the starting constant background.
    ``cell_constraint`` "cubic" refines one cell length (a = b = c, 90° angles; a cubic start).
    """

    def __init__(self, config: SimulationConfig, names: Sequence[str], *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None, background_start: float = 1e-3,
                 cell_constraint: str = "none") -> None:
        self.names = parse_refine(list(names))
        self.config = config
        if cell_constraint not in CELL_CONSTRAINTS:
            raise InputError(f"cell constraint must be one of {CELL_CONSTRAINTS}, got {cell_constraint!r}",
                             field="--cell-constraint")
        self.cell_constraint = cell_constraint
        if "mosaic" in self.names and not config.crystal.mosaic_spread_deg > 0:
            raise InputError("refining the mosaic spread needs a starting -mosaic > 0 (deg): a spread of 0 "
                             "makes a single unrotated domain", field="-mosaic")
        if "misset" in self.names and config.crystal.misset_random:
            raise InputError("-misset random cannot be refined; give -misset rx ry rz as the start", field="-misset")
        self.simulator = Simulator(config, dtype=dtype, device=device)
        self.dtype, self.device = dtype, self.simulator.device
        self.shape = self.simulator.shape
        starts = self._starts(background_start)
        self.transforms: dict[str, Transform] = {n: self._transform(n, starts[n]) for n in self.names}
        self.variables: dict[str, Tensor] = {}
        for n in self.names:
            u = self.transforms[n].inverse(starts[n], field=REFINABLE[n])
            self.variables[n] = torch.tensor(u, dtype=dtype, device=self.device)
        self.start_values = {REFINABLE[n]: _plain(starts[n]) for n in self.names}

    def _starts(self, background: float) -> dict[str, float | tuple]:
        cfg = self.config
        cr, det = cfg.crystal, cfg.detector
        out: dict[str, float | tuple] = {"scale": 1.0, "background": background,
                                         "mosaic": cr.mosaic_spread_deg,
                                         "misset": tuple(cr.misset_deg or (0.0, 0.0, 0.0)),
                                         "detector_rotation": tuple(det.rot_deg),
                                         "twotheta": det.twotheta_deg}
        if "cell" in self.names:
            if cr.cell is None:
                raise InputError("refining the cell needs -cell a b c alpha beta gamma (not -mat)", field="-cell")
            out["cell"] = tuple(cr.cell)
        out["ncells"] = tuple(self.simulator.n_cells)
        with torch.no_grad():
            geom = detector_geometry(cfg, dtype=torch.float64, device=torch.device("cpu"))
            out["distance"] = float(geom.distance) * 1000.0 if det.distance_mm is None else det.distance_mm
            out["beam_center"] = (geom.values["Xbeam"], geom.values["Ybeam"])
            out["wavelength"] = float(wavelength_m(cfg, None, dtype=torch.float64, device=torch.device("cpu"))) * 1e10
            out["fluence"] = float(resolved_fluence(cfg, None, dtype=torch.float64, device=torch.device("cpu")))
        return out

    def _transform(self, name: str, start) -> Transform:
        """Transform of ``name``; units chosen so that u = 1 is a typical step (see transforms.py)."""
        pixel = self.config.detector.pixel_mm
        if name in ("misset", "detector_rotation", "twotheta"):
            return Shift(start, 1.0)  # degrees
        if name == "beam_center":
            return Shift(start, pixel)  # pixels
        if name == "cell" and self.cell_constraint == "cubic":  # one length: u = 1 is 1 %
            return CubicCell(float(start[0]), RELATIVE_STEP)
        if name == "cell":  # lengths: u = 1 is 1 %; angles in (0, 180) deg
            return Split(((3, Positive(tuple(start[:3]), RELATIVE_STEP)), (3, Interval(0.0, 180.0))))
        if name == "ncells":
            return Above(1.0, 1.0)  # N > 1 cells, softplus
        if name == "background":
            return Above(0.0, max(start, 1e-12))
        if name in ("distance", "wavelength"):
            return Positive(start, RELATIVE_STEP)  # u = 1 is 1 %
        if name == "mosaic":  # bounded: a blurring parameter must not absorb an orientation error
            return Interval(0.0, max(MOSAIC_MAX_DEG, 2.0 * float(start)))  # log-like well below the bound
        return Positive(start)  # fluence, scale: u = 1 is a factor e

    def params(self, variables: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Refined values in user units, by key of :data:`REFINABLE` (simulator and image-level), of
        ``variables`` (unconstrained, by refined name; default: the model's own)."""
        variables = self.variables if variables is None else variables
        return {REFINABLE[n]: self.transforms[n](variables[n]) for n in self.names}

    def __call__(self, variables: dict[str, Tensor] | None = None) -> Tensor:
        """The model image (spixels, fpixels), photons/pixel, at ``variables`` (default: the model's own)."""
        p = self.params(variables)
        image = self.simulator({k: v for k, v in p.items() if k not in IMAGE_LEVEL})
        if "scale" in p:
            image = image * p["scale"]
        if "background" in p:
            image = image + p["background"]
        return image

    def values(self) -> dict[str, float | list[float]]:
        """Refined values in user units as plain numbers (one host synchronisation)."""
        with torch.no_grad():
            p = self.params()
            flat = torch.cat([v.detach().reshape(-1).to(torch.float64) for v in p.values()]).cpu().tolist()
        out, i = {}, 0
        for key, v in p.items():
            n = v.numel()
            out[key] = flat[i] if v.dim() == 0 else flat[i:i + n]
            i += n
        return out


def _plain(value) -> float | list[float]:
    return [float(x) for x in value] if isinstance(value, (tuple, list)) else float(value)


# ----------------------------------------------------------------------------------- losses
def poisson_deviance(model: Tensor, observed: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``Σ w [μ − y + y log(y/μ)]`` with μ = model + ε, y = observed + ε (y ≥ 0); all images (S, F).

    The Poisson negative log-likelihood minus its minimum over μ (half the Poisson deviance).
    """
    mu = model + eps
    y = observed + eps
    return (weight * (mu - y + y * (torch.log(y) - torch.log(mu)))).sum()


def least_squares(model: Tensor, observed: Tensor, weight: Tensor) -> Tensor:
    """``½ Σ w (model − observed)²`` (photons²)."""
    r = model - observed
    return 0.5 * (weight * r * r).sum()


# ----------------------------------------------------------------------------------- stages
def plan_stages(names: Sequence[str], *, strategy: str = "orient", steps: int = 25, tol: float = 1e-6,
                patience: int = 1,
                coarse: bool = False, restraint: bool = False, optimizer: str = "lbfgs",
                lr: float | None = None, restraint_ratio: float = 0.1, lbfgs_iters: int = 4) -> list[Stage]:
    """The staged release of :data:`RELEASE` for the refined ``names``.

    Stage k frees the groups of release steps 1..k that are refined; steps that free nothing new
    are skipped and a final stage ``all`` frees every refined group. The first stage fits the
    ``data_coarse`` term when ``coarse``. With a ``restraint`` (cell refined), the stage that
    releases the cell is always followed by ``all``, and stages with several terms are balanced
    by GradNormRatioBalancer (reference ``data``, restraint ratio ``restraint_ratio``), recomputed
    at each stage start on that stage's free groups.
    """
    names = parse_refine(list(names))
    if strategy not in STRATEGIES[1:]:
        raise InputError(f"strategy must be one of {STRATEGIES[1:]}, got {strategy!r}", field="--strategy")
    lr = (1.0 if optimizer == "lbfgs" else 0.05) if lr is None else lr
    intensity = [g for g in INTENSITY if g in names]
    plan: list[tuple[str, list[str]]] = []
    release = {"staged": RELEASE, "orient": RELEASE[:1], "joint": ()}[strategy]
    for stage_name, groups in release:
        added = [g for g in groups if g in names and g not in INTENSITY]
        if added:
            plan.append((stage_name, added + intensity))
    covered = {g for _, groups in plan for g in groups}
    if not plan or len(plan) > 1 or covered != set(names) or (restraint and plan[-1][0] == "cell"):
        plan.append(("all", list(names)))
    stages = []
    for i, (stage_name, groups) in enumerate(plan):
        terms = ["data_coarse"] if coarse and i == 0 and len(plan) > 1 else ["data"]
        if restraint and "cell" in groups:
            terms.append("cell_restraint")
        balancer: Balancer = (GradNormRatioBalancer("data", {"cell_restraint": restraint_ratio})
                              if len(terms) > 1 else FixedBalancer())
        options = {"max_iter": lbfgs_iters} if optimizer == "lbfgs" else None
        stages.append(Stage(stage_name, groups, terms=terms, optimizer=optimizer, lr=lr, steps=steps, tol=tol,
                            patience=patience, balancer=balancer, optimizer_options=options))
    return stages


def capture_stages(names: Sequence[str], *, steps: int = 25, tol: float = 1e-6, patience: int = 1,
                   lbfgs_iters: int = 4, final_term: str = "data") -> list[Stage]:
    """The default plan (strategy "capture"): with the misset refined, ``orient_low`` (misset and
    intensity groups on the low-resolution strong pixels, term ``data_low``), ``orient`` (the same
    on every selected pixel, term ``data``), then ``all`` (every refined group, term ``final_term``:
    ``data_final`` is the same pixels with the finer mosaic of :func:`final_model_config`): the
    mosaic spread is released only once the orientation is locked. Without the misset: ``all``.
    """
    names = parse_refine(list(names))
    intensity = [g for g in INTENSITY if g in names]
    plan: list[tuple[str, list[str], str]] = []
    if "misset" in names:
        plan += [("orient_low", ["misset"] + intensity, "data_low"), ("orient", ["misset"] + intensity, "data")]
    plan.append(("all", list(names), final_term))
    return [Stage(name, groups, terms=[term], optimizer="lbfgs", lr=1.0, steps=steps, tol=tol, patience=patience,
                  balancer=FixedBalancer(), optimizer_options={"max_iter": lbfgs_iters})
            for name, groups, term in plan]


# ----------------------------------------------------------------------------------- refine
@dataclass
class RefineResult:
    """Outcome of :func:`refine`.

    ``parameters`` / ``start``: refined / starting values in user units (keys of
    :data:`REFINABLE`'s values: ``mosaic_spread_deg``, ``misset_deg`` ...). ``initial_loss`` and
    ``final_loss``: the ``data`` term (deviance or least squares) at the start and at the end;
    ``iterations``: optimiser steps of all stages; ``evaluations``: model evaluations in this call
    (forward passes, line search included; the search's are in ``search``); ``wall_s``: seconds
    spent in the search and the fit; ``image``: refined model image (spixels, fpixels) float32;
    ``fit``: the core's FitResult; ``search``: the orientation search summary (None without one).
    ``optimizer_converged``: every stage met its tolerance; ``fit_ok``: no quality flag
    (:mod:`equipoise.diffraction.fit_quality`); ``converged`` = both; ``quality``: the flags,
    ``standard_errors`` (user units, :mod:`equipoise.diffraction.uncertainty`), ``undetermined``
    (parameters the image does not determine) and
    the numbers behind them; ``pixels``: the strong-pixel subsets (capture strategy).
    """

    parameters: dict[str, float | list[float]]
    start: dict[str, float | list[float]]
    initial_loss: float
    final_loss: float
    iterations: int
    evaluations: int
    converged: bool
    wall_s: float
    image: np.ndarray
    fit: FitResult
    run_dir: Path | None = None
    stages: list[dict] = field(default_factory=list)
    search: dict | None = None
    optimizer_converged: bool = False
    fit_ok: bool = True
    quality: dict = field(default_factory=dict)
    pixels: dict | None = None
    resumed: bool = False

    @property
    def reasons(self) -> list[str]:
        """One line per quality flag: what was measured, then the likely fix."""
        return [f"{f['name']}: {f['message']}; fix: {f['fix']}" for f in self.quality.get("flags", [])]

    def summary(self) -> dict:
        """JSON-ready summary (what summary.json holds, besides the core's fields)."""
        return {"parameters": self.parameters, "start": self.start, "initial_loss": self.initial_loss,
                "final_loss": self.final_loss, "iterations": self.iterations, "evaluations": self.evaluations,
                "converged": self.converged, "optimizer_converged": self.optimizer_converged,
                "fit_ok": self.fit_ok, "reasons": self.reasons, "quality": self.quality,
                "wall_s": self.wall_s, "stages": self.stages, "search": self.search, "pixels": self.pixels,
                "resumed": self.resumed}


class _Images:
    """Forward output of the capture fit: model images of the two pixel subsets, each evaluated
    at most once per forward pass, only when a term of the stage asks for it."""

    def __init__(self, models: dict[str, ImageModel]) -> None:
        self._models, self._done = models, {}

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._done:
            self._done[key] = self._models[key]()
        return self._done[key]


def final_model_config(config: SimulationConfig, names: Sequence[str], strategy: str = "capture",
                       final_mosaic_domains: int | None = FINAL_MOSAIC_DOMAINS) -> SimulationConfig:
    """The model configuration of the last stage of :func:`refine`: ``config`` itself, or, with the
    capture strategy and the mosaic spread refined, a copy with at least ``final_mosaic_domains``
    mosaic domains (None or 0: keep the configured count; see :data:`FINAL_MOSAIC_DOMAINS`)."""
    if (strategy != "capture" or "mosaic" not in parse_refine(list(names)) or not final_mosaic_domains
            or mosaic_domain_count(config) >= final_mosaic_domains):
        return config
    return dataclasses.replace(config, crystal=dataclasses.replace(config.crystal,
                                                                   mosaic_domains=int(final_mosaic_domains)))


def _with_mask(config: SimulationConfig, keep: np.ndarray) -> SimulationConfig:
    """A copy of ``config`` whose simulator evaluates only the pixels ``keep`` (spixels, fpixels)."""
    return dataclasses.replace(config, detector=dataclasses.replace(config.detector,
                                                                    mask=keep.astype(np.float32), mask_file=None))


def refine(observed: np.ndarray | Tensor, config: SimulationConfig, names: str | Sequence[str] = ("mosaic", "misset"),
           *, loss: str = "poisson", mask: np.ndarray | None = None, out_dir: str | Path | None = None,
           stages: Sequence[Stage] | None = None, strategy: str = "capture", steps: int = 25, tol: float = 1e-6,
           patience: int = 1, optimizer: str = "lbfgs", coarse_blur_px: float = 0.0,
           search: tuple[float, float] | str | None = "auto", search_n_cells: float | None = 3.0,
           search_top: int = 3, cell_constraint: str = "none",
           cell_sigma: tuple[float, float] | None = (1.0, 1.0), restraint_ratio: float = 0.1,
           dtype: torch.dtype = torch.float64, device: torch.device | str | None = None, progress: str = "quiet",
           log_every: int = 1, grad_every: int = 1, diagnostics: bool = True, overwrite: bool = False,
           checkpoint_every: int = 1, max_steps: int | None = None, full_image: bool = True,
           plots: bool = True, final_mosaic_domains: int | None = FINAL_MOSAIC_DOMAINS) -> RefineResult:
    """Refine ``names`` so that the model image of ``config`` matches ``observed``.

    Parameters
    ----------
    observed: (spixels, fpixels) photons/pixel (finite; >= 0 for the Poisson loss).
    config: the model and the starting values (e.g. from ``parse_nanobragg_args``).
    names: refined parameters (:data:`REFINABLE` keys), a list or "mosaic,misset".
    loss: "poisson" (deviance, default) or "lsq".
    mask: (spixels, fpixels), 0 = ignore the pixel; pixels outside ``-roi``/``-mask`` are ignored too.
    out_dir: run directory (config.json, record.jsonl, summary.json, plots/, refined.bin, refined.npy,
        search.json); None writes nothing. An existing run with the same settings is resumed from its
        checkpoint; other settings are an InputError unless ``overwrite`` (then it starts over).
    strategy: "capture" (default): strong-pixel subsets (:mod:`equipoise.diffraction.pixels`) and
        :func:`capture_stages`; or the whole-image plans of :func:`plan_stages` ("orient", "staged",
        "joint"). ``stages``: explicit stages instead (terms ``data``, ``data_low`` (capture),
        ``data_coarse``, ``cell_restraint``).
    coarse_blur_px: σ (pixels) of the blurred ``data_coarse`` term fitted in the first stage (0: off;
        whole-image strategies).
    search: (range, step) deg: before the fit, the orientation search of
        :func:`~equipoise.diffraction.orientation_search.search_misset` on that grid around the
        start, ``search_n_cells`` cells per axis in its coarse level (broadened spots; None: the
        model's N) and ``search_top`` candidates searched again finely. "auto" (default):
        :data:`AUTO_SEARCH` with the capture strategy when the misset is refined, else none.
        None: no search.
    cell_constraint: "none" (six cell values) or "cubic" (one length; needs a cubic start).
    cell_sigma: (Å, deg) widths of the cell restraint toward the starting cell (cell refined only;
        None: no restraint).
    restraint_ratio: the restraint's gradient-norm ratio to ``data`` at each stage start.
    final_mosaic_domains: with the capture strategy and the mosaic refined, the last stage (``all``,
        term ``data_final``) models at least this many mosaic domains (:func:`final_model_config`);
        ``final_loss``, ``image`` and the fit-quality checks use that model. None or 0: the
        configured count throughout.
    checkpoint_every: steps between checkpoints; ``max_steps``: stop after this many steps (a
        checkpoint; resume by calling again). ``full_image``: evaluate the refined model on the whole
        detector for ``image`` (False: only the fitted pixel subset, zero elsewhere). ``plots``: draw
        the figures of :mod:`equipoise.diffraction.refine_figures` into out_dir/plots.
    dtype, device: of every tensor. progress, log_every, grad_every, diagnostics: see core.Fit.
    """
    names = parse_refine(names)
    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {STRATEGIES}, got {strategy!r}", field="--strategy")
    obs_np, weight_np = _check_data(observed, config, loss, mask)
    if search == "auto":
        search = AUTO_SEARCH if strategy == "capture" and "misset" in names else None
    if search is not None and "misset" not in names:
        raise InputError("the orientation search needs the misset refined (--refine ...,misset)",
                         field="--search-misset")
    settings = fingerprint(observed=obs_np, mask=weight_np, config=config, names=names, loss=loss,
                           strategy=strategy, stages=None if stages is None else [s.describe() for s in stages],
                           steps=steps, tol=tol, patience=patience, optimizer=optimizer,
                           coarse_blur_px=coarse_blur_px, search=None if search is None else list(search),
                           search_n_cells=search_n_cells, search_top=search_top, cell_constraint=cell_constraint,
                           cell_sigma=cell_sigma, restraint_ratio=restraint_ratio, dtype=str(dtype),
                           final_mosaic_domains=final_mosaic_domains)
    resuming = out_dir is not None and prepare_run_dir(out_dir, settings, overwrite)
    started = time.perf_counter()
    fitted = weight_np > 0
    mean_obs = float(obs_np[fitted].mean())
    background_start = max(float(np.median(obs_np[fitted])), 1e-3 * max(mean_obs, 1e-12))
    eps = POISSON_FLOOR * max(mean_obs, 1e-12)
    subsets = None
    if strategy == "capture":
        subsets = select_pixels(obs_np, weight_np, pixel_resolution_A(config))
        sets = {"data": subsets.full, "data_low": subsets.low}
    else:
        sets = {"data": fitted}
    models = {key: ImageModel(_with_mask(config, keep) if strategy == "capture" else config, names, dtype=dtype,
                              device=device, background_start=background_start, cell_constraint=cell_constraint)
              for key, keep in sets.items()}
    final_config = final_model_config(config, names, strategy, final_mosaic_domains)
    final_key = "data"
    if final_config is not config:  # the last stage's finer mosaic, on the same pixels as "data"
        final_key = "data_final"
        sets["data_final"] = sets["data"]
        models["data_final"] = ImageModel(_with_mask(final_config, sets["data"]), names, dtype=dtype, device=device,
                                          background_start=background_start, cell_constraint=cell_constraint)
    model = models["data"]
    for other in models.values():  # one set of variables shared by the subsets' models
        other.variables = model.variables
    dev = model.device
    obs = torch.as_tensor(obs_np, dtype=dtype, device=dev)
    weights = {key: torch.as_tensor(weight_np * keep, dtype=dtype, device=dev) for key, keep in sets.items()}
    weight = weights["data"]
    final_model = models[final_key]

    def data_loss(image: Tensor, target: Tensor, w: Tensor) -> Tensor:
        return poisson_deviance(image, target, w, eps) if loss == "poisson" else least_squares(image, target, w)

    terms = [Term(key, (lambda images, key=key: data_loss(images[key], obs, weights[key]))) for key in sets]
    if coarse_blur_px > 0 and strategy != "capture":
        obs_blur = _gaussian_blur(obs * weight, coarse_blur_px)
        w_blur = (_gaussian_blur(weight, coarse_blur_px) > 1e-6).to(dtype)
        terms.append(Term("data_coarse", lambda images: data_loss(
            _gaussian_blur(images["data"] * weight, coarse_blur_px), obs_blur, w_blur)))
    restraint = "cell" in names and cell_sigma is not None
    if restraint:
        cell0 = torch.as_tensor(config.crystal.cell, dtype=dtype, device=dev)
        sigma = torch.as_tensor([cell_sigma[0]] * 3 + [cell_sigma[1]] * 3, dtype=dtype, device=dev)
        cell_of = model.transforms["cell"]
        terms.append(Term("cell_restraint",
                          lambda _images: 0.5 * (((cell_of(model.variables["cell"]) - cell0) / sigma) ** 2).sum()))
    if stages is None and strategy == "capture":
        stages = capture_stages(names, steps=steps, tol=tol, patience=patience, final_term=final_key)
        if restraint:
            stages = [dataclasses.replace(s, terms=[*s.terms, "cell_restraint"],
                                          balancer=GradNormRatioBalancer(s.terms[0],
                                                                         {"cell_restraint": restraint_ratio}))
                      if "cell" in s.free else s for s in stages]
    elif stages is None:
        stages = plan_stages(names, strategy=strategy, steps=steps, tol=tol, patience=patience,
                             coarse=coarse_blur_px > 0, restraint=restraint, optimizer=optimizer,
                             restraint_ratio=restraint_ratio)
    counter = {"n": 0}

    def forward() -> _Images:
        counter["n"] += 1
        return _Images(models)

    with torch.no_grad():  # initial and final loss with the last stage's model: comparable numbers
        initial_loss = float(data_loss(final_model(), obs, weight))
    found = _load_search(out_dir) if resuming else None
    if search is not None and found is None:  # forward-only grid search; the fit then starts from its best misset
        low = sets.get("data_low", sets["data"])
        result_search = search_misset(obs, weights.get("data_low", weight),
                                      _with_mask(config, low) if strategy == "capture" else config,
                                      search[0], search[1], loss=loss, eps=eps, n_cells=search_n_cells,
                                      top=search_top, dtype=dtype, device=dev)
        found = result_search.summary()
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "search.json").write_text(json.dumps(found, indent=2) + "\n")
    if found is not None:
        u = model.transforms["misset"].inverse(found["best_misset_deg"], field="misset_deg")
        model.variables["misset"] = torch.tensor(u, dtype=dtype, device=dev)
    run_config = {"refine": names, "loss": loss, "coarse_blur_px": coarse_blur_px, "dtype": str(dtype),
                  "start": model.start_values, "poisson_floor": eps, "pixels_fitted": int(fitted.sum()),
                  "cell_constraint": cell_constraint, "search": found, "settings": settings,
                  "pixels": None if subsets is None else subsets.summary(),
                  "mosaic_domains": {key: mosaic_domain_count(m.config) for key, m in models.items()}}
    fit = Fit(dict(model.variables), terms, stages, forward=forward, run_dir=out_dir, log_every=log_every,
              grad_every=grad_every, summarize=model.values, progress=progress, config=run_config,
              diagnostics=diagnostics, checkpoint_every=checkpoint_every)
    try:
        result = fit.run(resume=resuming, max_steps=max_steps)
    except KeyboardInterrupt:
        if out_dir is not None:
            note_interrupt(out_dir, _checkpoint_step(out_dir))
        raise
    wall = time.perf_counter() - started
    with torch.no_grad():
        image = final_model()
        final_loss = float(data_loss(image, obs, weight))
        if full_image and strategy == "capture":
            whole = ImageModel(final_config, names, dtype=dtype, device=device, background_start=background_start,
                               cell_constraint=cell_constraint)
            whole.variables = model.variables
            image = whole()
    image_np = image.detach().cpu().numpy().astype(np.float32)
    parameters = model.values()
    fitted_weight = weight_np * sets["data"]
    flags, numbers = assess_fit(obs_np, image_np.astype(np.float64), fitted_weight,
                                final_loss if loss == "poisson" else None, names=names, parameters=parameters,
                                start=model.start_values, mosaic_bound=_upper_bound(model),
                                mosaic_domains=_mosaic_domains(final_config, parameters, fitted_weight, strategy))
    errors = standard_errors(final_model, final_model.variables,
                             final_model.transforms, {n: REFINABLE[n] for n in final_model.names}, obs, weight,
                             loss=loss, dispersion=numbers.get("deviance_ratio", 1.0))
    quality = {"flags": [f.to_dict() for f in flags], **numbers, "standard_errors": errors,
               "undetermined": undetermined(parameters, errors)}
    optimizer_converged = bool(result.converged)
    out = RefineResult(parameters=parameters, start=model.start_values, initial_loss=initial_loss,
                       final_loss=final_loss, iterations=result.steps, evaluations=counter["n"],
                       converged=optimizer_converged and not flags, wall_s=wall, image=image_np, fit=result,
                       run_dir=None if out_dir is None else Path(out_dir),
                       stages=[{"name": s.name, "steps": s.steps, "converged": s.converged,
                                "final_loss": s.final_loss, "weights": s.weights, "reasons": s.reasons}
                               for s in result.stages], search=found, optimizer_converged=optimizer_converged,
                       fit_ok=not flags, quality=quality, pixels=None if subsets is None else subsets.summary(),
                       resumed=resuming)
    if out_dir is not None and result.completed:
        _write_outputs(Path(out_dir), out, config, obs_np, plots)
    return out


def _upper_bound(model: ImageModel) -> float | None:
    """Upper bound (deg) of the refined mosaic spread, None when it is not refined."""
    transform = model.transforms.get("mosaic")
    return float(transform.high) if isinstance(transform, Interval) else None


def _load_search(out_dir: str | Path | None) -> dict | None:
    """The orientation search of a resumed run (search.json), None if it had none."""
    path = None if out_dir is None else Path(out_dir) / "search.json"
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def _checkpoint_step(out_dir: str | Path) -> int | None:
    """Global step of ``out_dir``'s checkpoint, None if there is none."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["state"]["global_step"])


def _check_data(observed: np.ndarray | Tensor, config: SimulationConfig, loss: str,
                mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(observed float64, pixel weights) after checking shape, finiteness, loss name and sign."""
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {LOSSES}, got {loss!r}", field="--loss")
    obs_np = observed.detach().cpu().numpy() if isinstance(observed, Tensor) else np.asarray(observed)
    obs_np = obs_np.astype(np.float64)
    shape = image_shape(config)
    if obs_np.shape != shape:
        raise InputError(f"observed image has shape {obs_np.shape}, the geometry gives (slow, fast) = {shape}",
                         field="observed")
    if not np.all(np.isfinite(obs_np)):
        raise InputError(f"observed image has {int((~np.isfinite(obs_np)).sum())} NaN/Inf pixels", field="observed")
    weight_np = _pixel_weights(config, mask, shape)
    if not weight_np.any():
        raise InputError("every pixel is masked: nothing to fit", field="--mask")
    if loss == "poisson" and (obs_np[weight_np > 0] < 0).any():
        raise InputError(f"the Poisson loss needs photon counts >= 0; the image has values down to "
                         f"{obs_np[weight_np > 0].min():g} (subtract no pedestal, or use --loss lsq)", field="--loss")
    return obs_np, weight_np


def _mosaic_domains(config: SimulationConfig, parameters: dict, fitted: np.ndarray, strategy: str
                    ) -> tuple[int, int | None, str] | None:
    """(domains of ``config``, domains needed at the fitted spread out to the highest resolution of
    the ``fitted`` pixels, the option that sets them) for :func:`assess_fit`; None without a
    refined spread."""
    if "mosaic_spread_deg" not in parameters:
        return None
    d = pixel_resolution_A(config)[fitted > 0]
    needed = mosaic_domains_needed(float(parameters["mosaic_spread_deg"]), 1.0 / float(d.min()), config) \
        if d.size else None
    option = "--final-mosaic-domains" if strategy == "capture" else "-mosaic_domains"
    return mosaic_domain_count(config), needed, option


def evaluate_loss(observed: np.ndarray | Tensor, config: SimulationConfig, *, loss: str = "poisson",
                  mask: np.ndarray | None = None, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> float:
    """The ``data`` term of :func:`refine` for the model image of ``config`` (no fitting).

    E.g. the loss at the true parameters: the floor a refinement against a noisy image can reach.
    """
    obs_np, weight_np = _check_data(observed, config, loss, mask)
    with torch.no_grad():
        image = Simulator(config, dtype=dtype, device=device)()
        obs = torch.as_tensor(obs_np, dtype=dtype, device=image.device)
        weight = torch.as_tensor(weight_np, dtype=dtype, device=image.device)
        if loss == "lsq":
            return float(least_squares(image, obs, weight))
        eps = POISSON_FLOOR * max(float(obs_np[weight_np > 0].mean()), 1e-12)
        return float(poisson_deviance(image, obs, weight, eps))


def image_shape(config: SimulationConfig) -> tuple[int, int]:
    """(spixels, fpixels) of ``config``'s detector, without building a simulator."""
    _, _, _, fpixels, spixels = detector_size(config.detector)
    return (int(spixels), int(fpixels))


def _pixel_weights(config: SimulationConfig, mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """1 for fitted pixels, 0 for ignored ones: inside ``-roi``, not ``-mask``ed, ``mask`` != 0."""
    with torch.no_grad():
        geom = detector_geometry(config, dtype=torch.float64, device=torch.device("cpu"))
    fmin, fmax, smin, smax = geom.roi
    keep = np.zeros(shape, dtype=bool)
    keep[max(smin, 0):smax + 1, max(fmin, 0):fmax + 1] = True
    if geom.mask is not None:
        keep &= geom.mask.cpu().numpy().astype(bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != shape:
            raise InputError(f"mask has shape {m.shape}, the geometry gives (slow, fast) = {shape}", field="--mask")
        keep &= m != 0
    return keep.astype(np.float64)


def _write_outputs(run_dir: Path, result: RefineResult, config: SimulationConfig, observed: np.ndarray,
                   plots: bool) -> None:
    """summary.json (core's fields plus the refinement's), the quality flags as a record line,
    plots/ (refine_figures; core's plot_run when a stage balances several terms), refined.bin and
    refined.npy."""
    from equipoise.core.record import RunDir, dumps

    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(result.summary())
    RunDir(run_dir).write_json(path, summary)
    if result.quality.get("flags") and not result.resumed:
        with open(run_dir / "record.jsonl", "a", encoding="utf-8") as handle:
            handle.write(dumps({"step": result.iterations, "stage": "final", "loss": result.final_loss,
                                 "quality_flags": result.quality["flags"]})
                         + "\n")
    io.write_raw_float32(run_dir / "refined.bin", result.image)
    np.save(run_dir / "refined.npy", result.image)
    if not plots:
        return
    folder = run_dir / "plots"
    draw_images(observed, result.image.astype(np.float64), config, folder / "images.png")
    draw_parameters(run_dir, folder / "parameters.png")
    draw_loss(run_dir, folder / "loss.png")
    if any(len(s.get("weights", {})) > 1 for s in result.stages):
        plot_run(run_dir)


def starting_config(config: SimulationConfig, **crystal: object) -> SimulationConfig:
    """A copy of ``config`` with crystal fields replaced (e.g. ``mosaic_spread_deg=0.2``)."""
    return dataclasses.replace(config, crystal=dataclasses.replace(config.crystal, **crystal))

