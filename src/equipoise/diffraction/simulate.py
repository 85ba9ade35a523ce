"""The still-image diffraction simulator (nanoBragg's ``add_nanoBragg_spots``), differentiable and chunked.

Model (PHYSICS.md §1.1, §1.3, §1.13), for pixel (s, f):

    I = r_e² Φ / steps · Σ_subpixels Σ_layers Σ_sources Σ_φ Σ_mosaic F_cell(h)² F_latt(h)² · P · Ω · capture
    steps = N_sources · N_mosaic · N_φ · oversample²      (thickness layers are not counted)

with ``h = a·q``, ``q = (d̂ − î)/λ``, ``a = U_mos · R_spindle(φ) · a0`` (crystal.py), F_latt from
lattice.py, F_cell from structure_factors.py, P/Ω/capture/positions/sources from geometry.py and
sources.py. ``r_e² = 7.94079248018965e-30 m²``. The result is in photons/pixel; pixels outside
``-roi`` or masked by ``-mask`` are 0.

Modes: ``config.mode``
----------------------
``"physical"`` (default) computes the model above, with every factor evaluated where it belongs.
``"nanobragg"`` reproduces the C program's documented quirks, for parity with its images. The
differences, all of which exist only in ``"nanobragg"`` mode:

1. **Solid angle and polarization** are taken once per pixel, from the first subpixel (first
   layer) and the first source, and multiply the whole sum (PHYSICS.md §1.1). Physical: Ω and P
   are evaluated per subpixel, layer and source inside the sum.
2. **Detector absorption**: the F² sum over layers is multiplied by the *last* layer's capture
   fraction (of the first subpixel), i.e. ≈ N_t·capture_last instead of Σ_t capture_t (§1.7).
   Physical: each layer's term is multiplied by its own capture fraction, and the layers tile the
   sensor (step T/N_t instead of nanoBragg's T/(N_t−1), which spans T·N_t/(N_t−1)), so the
   layers absorb 1 − exp(−T·μ/ρ) in total: for 450 µm, μ = 1/500 µm, 5 layers at normal
   incidence 0.593 (physical) against 0.411 (nanoBragg).
3. **Water background** (§1.11): nanoBragg starts each pixel's accumulator at
   ``I_bg = F_bg² r_e² Φ w³ 1e6 N_A/18`` and then multiplies it again by ``r_e² Φ/steps · P Ω capture``.
   Physical: ``I_water = r_e² Φ F_bg² N_molecules · ⟨P Ω Σ_t capture_t⟩`` (mean over subpixels and
   sources), with ``N_molecules = w³ · 1e6 g/m³ · N_A / 18 g/mol``.
4. **φ = 0 reuse** (C-PARITY-001, §1.10): a φ step whose angle is exactly 0 is not rotated and
   reuses the previously rotated vectors, i.e. those of the last φ step of the previous subpixel.
   Reproduced as "the φ = 0 step uses the last step's rotation" (not reproduced: the very first
   evaluation of each of the C program's OpenMP threads, which uses a0 — two pixels of an image).
   Physical: the φ = 0 step uses the unrotated crystal.

Reproduced in both modes (they are properties of the C model rather than errors of accounting):
GAUSS/TOPHAT spot sizes in Å⁻¹ scaled by (NaNbNc)² and not rotated (§1.4); ``steps`` counting;
the ``-dmin`` cut skipping a source's whole contribution; the cell setup that gives slightly
different angles than requested for triclinic cells (crystal.py). Not reproduced in either mode:
the ``-oversample_thick/_polar/_omega`` running-sum bug (those flags are not in the config), the
global switch-off of tricubic interpolation after the first out-of-grid point (see
structure_factors.py), the ``Fdump.bin`` cache.

Evaluation
----------
Pixels are evaluated in chunks sized from ``config.memory_budget_bytes`` into one preallocated
image. Per-pixel geometry is laid out component-major, (3, n, O², T), with dot products as matrix
products (rotations.dot3): torch's CPU kernels are several times slower on a trailing axis of 3. For the square lattice with nearest-neighbour (or constant) F, the inner Σ over φ steps and
mosaic domains is the fused kernel of lattice_sum.py (value, or value and analytic Jacobians in
one pass), which takes a chunk's rows of q a cache-sized block at a time, so that chunks can be
large (few per image) and the per-pixel geometry runs on long vectors; other lattice shapes and
tricubic interpolation use plain autograd (lattice.py, structure_factors.py) on small chunks.
With autograd on, the whole image is one ``autograd.Function`` (``_ImageFunction``) that keeps
for its backward pass what fits in ``_SAVE_SHARE`` of the budget: the autograd graph of every
chunk's geometry with the lattice Jacobians (the backward pass then only differentiates), or the
Jacobians alone (the backward pass evaluates the geometry again), or only the small input tensors
(the backward pass evaluates each chunk again, Jacobians included). What is kept is small per
row of q: the per-row geometry (unit direction, 1/R, q) comes from pixel_rows.py's autograd
Functions, whose analytic backward passes keep d̂, 1/R and q alone, and the nanoBragg per-pixel
chain lattice sum · scale · P · Ω through product.py, which keeps the factors rather than every
partial product (float64 1024², one orientation: 13 values per row against 22 before; 1000² × 10
domains: 40 against 49, of which the lattice's dI/dh are 30). It is written into the simulator's
reusable buffers (saved_buffers.py): on the CPU a fresh buffer pays a page fault per 4 KiB on first
touch, and the memory freed after a backward pass goes back to the kernel, so that every call paid
them again (40 000-90 000 faults per 1024² float64 fwd+bwd). The buffers are held between calls
(at most what one forward pass keeps, within ``_SAVE_SHARE`` of the budget). Peak memory stays under the
budget whatever the image size (no allocator options are needed: test_memory.py). The chunk
kernel can be compiled with ``torch.compile`` (``compile=True``, opt-in, falls back to eager if
compilation fails; used only for evaluations without autograd and the recomputing backward pass;
tests never compile).
Timings against the C program: benchmarks/diffraction_forward.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from equipoise.errors import InputError

from . import crystal as xtal
from .config import SimulationConfig
from .geometry import (DetectorGeometry, absorbs, capture_fractions, detector_geometry, solid_angle_factors,
                       subpixel_positions)
from .lattice import lattice_factor
from .lattice_sum import square_lattice_jacobians, square_lattice_sum
from .params import param_tensor
from .pixel_rows import scattering_vectors, unit_directions
from .product import product
from .rotations import dot3
from .saved_buffers import SavedBuffers, _Lease
from .sources import beam_sources, fluence, polarization_factor, wavelength_m
from .structure_factors import StructureFactors

R_E_SQR = 7.94079248018965e-30  # m², Thomson cross section r_e² (PHYSICS.md §1.1)
WATER_F = 2.57  # electrons, F of a water molecule used by nanoBragg (§1.11)
AVOGADRO = 6.02214179e23  # mol⁻¹ (nanoBragg.c value)

# values of live intermediates per innermost evaluation (bytes per eval = this × dtype size), with
# margin for the backward recompute (the square kernel holds ~30: lattice_sum.py); tricubic adds
# 64-value gathers.
_WORK_PER_EVAL = 48
_WORK_PER_EVAL_TRICUBIC = 48 + 64 * 6
# eager evaluation is memory-bandwidth bound: chunks whose intermediates stay in cache are several
# times faster than huge ones (measured: 1000² × 10 domains float64, 0.57 s at 65536 evaluations per
# chunk against 8 s at 1.4 M; 2^16-2^17 fastest for the fused kernel, float32 and float64), so
# chunks are capped at this many innermost evaluations
_CHUNK_EVALS_CAP = 1 << 17
# square lattice: pixels are taken in blocks of up to this many rows of q (pixel × subpixel × layer ×
# source), each needing about _GEOMETRY_WORK values of per-row geometry (with autograd in the
# backward pass) plus its lattice Jacobians; the lattice sum then runs _CHUNK_EVALS_CAP evaluations
# at a time inside the block (lattice_sum.py). Large blocks keep the per-operation overhead of the
# geometry small (1000² × 10 domains: 8 chunks rather than 77 of 13107 pixels).
_GEOMETRY_ROWS_CAP = 1 << 17
_GEOMETRY_WORK = 128
# With autograd, the forward pass keeps for the backward pass what fits in this share of
# config.memory_budget_bytes (_ImageFunction): the lattice Jacobians and the autograd graph of the
# geometry ("graph"), else the lattice Jacobians alone ("tape"), else nothing ("recompute").
_SAVE_SHARE = 0.5
# values per row of q kept by the geometry's autograd graph, with margin for the chunks'
# temporaries (measured, float64: 10 in nanobragg mode on a flat detector without sensor
# absorption, 61 in physical mode with a curved detector, three absorbing layers and Kahn
# polarization; 28 and 68 before pixel_rows.py and product.py; a margin of 6 per row was too
# little for test_memory.py's 256² case)
_GRAPH_WORK_FLAT = 32
_GRAPH_WORK = 80


class Simulator:
    """Simulate still diffraction images of one configuration for many parameter values.

    Parameters
    ----------
    config: the nanoBragg-style configuration (units of the flags).
    dtype, device: arithmetic precision and device of every tensor (CPU or CUDA).
    compile: compile the per-chunk kernel with ``torch.compile`` (default False: see
        benchmarks/diffraction_forward.py for the measured trade-off).
    chunk_evals: override the number of innermost evaluations per chunk (default: from
        ``config.memory_budget_bytes``).

    Static work (configuration checks, pixel list, oversampling, random mosaic draws, the HKL grid)
    is done once here; ``__call__(params)`` evaluates the image, differentiably in ``params``
    (names and shapes in equipoise.diffraction.params: cell, misset_deg, mosaic_spread_deg, n_cells,
    wavelength_A, distance_mm, beam_center_mm, detector_rot_deg, twotheta_deg, fluence, F,
    default_F).

    Attributes: ``shape`` (spixels, fpixels); ``oversample`` (resolved, nanoBragg's automatic rule
    when not given); ``steps`` (nanoBragg's normalisation count); ``n_sources``, ``n_phi``,
    ``n_mosaic``.
    """

    def __init__(self, config: SimulationConfig, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None, compile: bool = False,
                 chunk_evals: int | None = None) -> None:
        self.config = config
        self.dtype = dtype
        self.device = torch.device("cpu" if device is None else device)
        self.physical = config.mode != "nanobragg"
        if config.mode not in ("physical", "nanobragg"):
            raise InputError(f"mode must be 'physical' or 'nanobragg', got {config.mode!r}", field="mode")
        geom = self._geometry(None)
        self.shape = (geom.spixels, geom.fpixels)
        lam0 = wavelength_m(config, None, dtype=dtype, device=self.device)
        vecs = xtal.crystal_vectors(config, None, lam0 * 1e10, dtype=dtype, device=self.device)
        self.n_cells = xtal.n_cells(config, vecs.real)
        self.oversample = self._oversample(geom, vecs.real, float(lam0))
        self.phi0, self.phistep, self.n_phi = xtal.phi_steps(config)
        axes, fracs = xtal.mosaic_samples(config)
        self.n_mosaic = len(fracs)
        self._mos_axes = torch.as_tensor(axes, dtype=dtype, device=self.device)
        self._mos_fracs = torch.as_tensor(fracs, dtype=dtype, device=self.device)
        self.n_sources = int(beam_sources(config, geom, None, dtype=dtype, device=self.device).incident.shape[0])
        self.steps = self.n_sources * self.n_mosaic * self.n_phi * self.oversample ** 2
        cr = config.crystal
        self.interpolate = cr.interpolate if cr.interpolate is not None else min(self.n_cells) <= 2
        self._hkl_values = None if cr.hkl is None else torch.as_tensor(cr.hkl.values, dtype=dtype, device=self.device)
        self._grid_lower = cr.hkl.lower if cr.hkl is not None else (0, 0, 0)
        # square lattice with nearest-neighbour F (or none): the fused kernel of lattice_sum.py
        self._fast = cr.shape == "square" and not (self.interpolate and cr.hkl is not None)
        self._grid = None
        if cr.hkl is not None:
            extent = tuple(self._hkl_values.shape)
            self._grid = (torch.tensor(self._grid_lower, dtype=dtype, device=self.device),
                          torch.tensor(extent, dtype=dtype, device=self.device),
                          torch.tensor([extent[1] * extent[2], extent[2], 1], dtype=torch.int64, device=self.device),
                          extent[0] * extent[1] * extent[2])
        # pixel list: -roi (inclusive) and -mask
        fmin, fmax, smin, smax = geom.roi
        keep = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        keep[max(smin, 0):smax + 1, max(fmin, 0):fmax + 1] = True
        if geom.mask is not None:
            keep &= geom.mask.to(device=self.device, dtype=torch.bool)
        self._flat_index = torch.nonzero(keep.reshape(-1)).reshape(-1)
        self._rows_per_pixel = self.oversample ** 2 * geom.n_layers * self.n_sources
        n_orient = self.n_phi * self.n_mosaic
        work = _WORK_PER_EVAL_TRICUBIC if self.interpolate and cr.hkl is not None else _WORK_PER_EVAL
        self._itemsize = torch.empty((), dtype=dtype).element_size()
        if chunk_evals is None:
            chunk_evals = min(_CHUNK_EVALS_CAP,
                              max(1, int(config.memory_budget_bytes * 0.5) // (work * self._itemsize)))
        self.lattice_rows = max(1, chunk_evals // n_orient)
        block_pixels = chunk_evals // (self._rows_per_pixel * n_orient)
        if self._fast:
            rows = int(config.memory_budget_bytes * 0.25) // ((_GEOMETRY_WORK + 3 * n_orient + 8) * self._itemsize)
            block_pixels = max(block_pixels, min(_GEOMETRY_ROWS_CAP, rows) // self._rows_per_pixel)
        self.chunk_pixels = max(1, min(block_pixels, int(self._flat_index.numel()) or 1))
        # the compiled chunk kernel, or None (a bound method kept here would make the simulator a
        # reference cycle, freed only by the cyclic collector, with its reusable buffers)
        self._compiled_kernel = None
        self._saved = SavedBuffers(self.device)  # what the forward pass keeps, reused across calls
        self.compiled = False
        if compile:
            try:
                self._compiled_kernel = torch.compile(Simulator._chunk_kernel, dynamic=False)
                self.compiled = True
            except Exception as err:  # pragma: no cover - depends on the toolchain
                warnings.warn(f"torch.compile unavailable ({err}); using eager evaluation")

    # ------------------------------------------------------------------ static helpers
    def _geometry(self, params: Mapping[str, Tensor] | None) -> DetectorGeometry:
        geom = detector_geometry(self.config, params, dtype=self.dtype, device=self.device)
        thick = self.config.detector.thickness_um
        if self.physical and geom.n_layers > 1 and thick:
            # physical mode: layers tile the sensor, step T/N_t (nanoBragg: T/(N_t-1)); see module doc (2)
            geom = dataclasses.replace(geom, layer_step=thick * 1e-6 / geom.n_layers)
        return geom

    def _oversample(self, geom: DetectorGeometry, real: Tensor, lam0_m: float) -> int:
        """-oversample, or nanoBragg's ``ceil(3·max(N_i |a_i|) / (λ0·distance/Δ))`` (PHYSICS.md §1.4)."""
        given = self.config.detector.oversample
        if given is not None and given > 0:
            return int(given)
        size = max(n * float(v) for n, v in zip(self.n_cells, real.detach().norm(dim=1).cpu().tolist()))
        recommended = math.ceil(3.0 * size / (lam0_m * float(geom.distance) / geom.pixel_size))
        return max(1, recommended)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Image (spixels, fpixels) in photons/pixel for the parameter values ``params``."""
        p = dict(params or {})
        cfg, dtype, dev = self.config, self.dtype, self.device
        geom = self._geometry(p)
        src = beam_sources(cfg, geom, p, dtype=dtype, device=dev)
        lam0_A = wavelength_m(cfg, p, dtype=dtype, device=dev) * 1e10
        vecs = xtal.crystal_vectors(cfg, p, lam0_A, dtype=dtype, device=dev)
        n_cells = param_tensor(p, "n_cells", self.n_cells, dtype=dtype, device=dev)
        if bool((n_cells.detach() < 1).any()):
            raise InputError(f"number of unit cells must be >= 1, got {n_cells.detach().cpu().tolist()}",
                             field="n_cells")
        spread = param_tensor(p, "mosaic_spread_deg", cfg.crystal.mosaic_spread_deg, dtype=dtype, device=dev)
        umats = xtal.mosaic_matrices(spread, self._mos_axes, self._mos_fracs)
        phis = [self.phi0 + self.phistep * i for i in range(self.n_phi)]
        rot = xtal.rotated_real_vectors(vecs.real, geom.spindle, phis, umats, reuse_phi0=not self.physical)
        default_F = param_tensor(p, "default_F", cfg.crystal.default_F, dtype=dtype, device=dev)
        fvals = p["F"].to(dtype=dtype, device=dev) if "F" in p else self._hkl_values
        if fvals is not None and self._hkl_values is not None and fvals.shape != self._hkl_values.shape:
            raise InputError(f"F must have the HKL grid's shape {tuple(self._hkl_values.shape)}, "
                             f"got {tuple(fvals.shape)}", field="F")
        if fvals is not None and self._fast:
            # nearest-neighbour table for lattice_sum: grid values, then default_F (outside the grid)
            fvals = torch.cat([fvals.reshape(-1), default_F.reshape(1)])
        scale = R_E_SQR * fluence(cfg, p, dtype=dtype, device=dev) / self.steps
        tensors = (geom.pix0, geom.fdet, geom.sdet, geom.odet, geom.beam, geom.close_distance, geom.distance,
                   src.incident, src.wavelength, rot, vecs.recip_A, n_cells, default_F, scale,
                   fvals if fvals is not None else default_F)
        static = (geom, fvals is not None)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            flat = _ImageFunction.apply(self, static, *tensors)
        else:
            with torch.no_grad():
                flat = self._evaluate(static, tensors)
        return flat.reshape(self.shape)

    def _kernel(self):
        """The chunk kernel for evaluations without autograd: compiled when asked for (``compile=True``)."""
        if self._compiled_kernel is None:
            return self._chunk_kernel
        return functools.partial(self._compiled_kernel, self)

    def _chunks(self):
        """(flat pixel indices, count) per chunk; compiled kernels get constant shapes (last chunk padded)."""
        n = self._flat_index.numel()
        for start in range(0, n, self.chunk_pixels):
            idx = self._flat_index[start:start + self.chunk_pixels]
            count = idx.numel()
            if count < self.chunk_pixels and self.compiled:
                idx = torch.cat([idx, idx[-1:].expand(self.chunk_pixels - count)])
            yield idx, count

    def _evaluate(self, static, tensors: tuple[Tensor, ...], tape: _LatticeTape | None = None) -> Tensor:
        """Flat image (spixels·fpixels,) without autograd, chunk by chunk into one preallocated buffer.

        tape: records the lattice sum's Jacobians of every chunk (for :class:`_ImageFunction`).
        """
        image = torch.zeros(self.shape[0] * self.shape[1], dtype=self.dtype, device=self.device)
        kernel = self._kernel() if tape is None else self._chunk_kernel
        for idx, count in self._chunks():
            image.index_copy_(0, idx[:count], kernel(idx, *static, *tensors, tape=tape)[:count])
        return image

    def _backward_plan(self, has_grid: bool, needs: tuple[bool, ...]) -> tuple[str, tuple[bool, bool, bool, bool]]:
        """What :class:`_ImageFunction` keeps for its backward pass: ("graph" | "tape" | "recompute", need).

        ``needs`` flags the input tensors (as in ``__call__``) that require grad; ``need`` flags the
        lattice sum's inputs (q, rot, n_cells, table) whose Jacobians are wanted. "graph" and "tape"
        only for the fused square-lattice kernel, when they fit in ``_SAVE_SHARE`` of the budget.
        """
        # q depends on the geometry and sources (tensors 0-8); rot, n_cells, table are tensors 9, 11, 14
        need = (any(needs[:9]), needs[9], needs[11], has_grid and needs[14])
        if not self._fast:
            return "recompute", need
        n_orient = self.n_phi * self.n_mosaic
        jacobians = 1 + 3 * need[0] + 3 * n_orient * need[1] + 3 * need[2] + 3 * n_orient * need[3]
        det, beam = self.config.detector, self.config.beam
        flat = not (self.physical or det.curved or det.thickness_um or beam.polarization)
        graph = _GRAPH_WORK_FLAT if flat else _GRAPH_WORK
        budget = _SAVE_SHARE * self.config.memory_budget_bytes / self._itemsize
        rows = int(self._flat_index.numel()) * self._rows_per_pixel
        if rows * (jacobians + graph) <= budget:
            return "graph", need
        return ("tape" if rows * jacobians <= budget else "recompute"), need

    def _evaluate_graph(self, static, tensors: tuple[Tensor, ...], needs: tuple[bool, ...],
                        buffers: SavedBuffers | None = None):
        """Flat image as :meth:`_evaluate`, and (leaves, [(pixel indices, chunk output with its autograd graph)]).

        The leaves are detached copies of ``tensors`` requiring grad as flagged by ``needs``.
        ``buffers``: where the graphs' saved tensors and the lattice Jacobians are kept (saved_buffers.py).
        """
        leaves = tuple(t.detach().requires_grad_(n) for t, n in zip(tensors, needs))
        image = torch.zeros(self.shape[0] * self.shape[1], dtype=self.dtype, device=self.device)
        outs = []
        keep = None if buffers is None else buffers.take
        with torch.enable_grad():
            for idx, count in self._chunks():
                with contextlib.nullcontext() if buffers is None else buffers.saving():
                    out = self._chunk_kernel(idx, *static, *leaves, keep=keep)[:count]
                image.index_copy_(0, idx[:count], out.detach())
                outs.append((idx[:count], out))
        return image, (leaves, outs)

    def _water_molecules(self) -> float:
        """Molecules of water in the beam: w³ · 1e6 g/m³ · N_A / 18 g/mol (PHYSICS.md §1.11)."""
        w = self.config.water_um * 1e-6
        return w ** 3 * 1e6 * AVOGADRO / 18.0

    def _chunk_kernel(self, idx: Tensor, geom0: DetectorGeometry, has_grid: bool,
                      pix0, fdet, sdet, odet, beam, close_distance, distance, incident, wavelength, rot,
                      recip_A, n_cells, default_F, scale, fvals, tape: _LatticeTape | None = None,
                      keep=None) -> Tensor:
        """Photons (n,) for the flat pixel indices ``idx`` (n,); ``tape``: see :class:`_LatticeTape`.

        ``keep``: buffers for what the backward pass keeps (lattice Jacobians, lattice_sum.py, only
        without ``tape``; per-row geometry, pixel_rows.py).
        """
        cfg, water = self.config, self._water_molecules()
        geom = dataclasses.replace(geom0, pix0=pix0, fdet=fdet, sdet=sdet, odet=odet, beam=beam,
                                   close_distance=close_distance, distance=distance)
        s_idx = torch.div(idx, self.shape[1], rounding_mode="floor")
        f_idx = idx - s_idx * self.shape[1]
        # per-pixel geometry component-major, (3, n, O², T): elementwise passes over long rows
        pos_c = subpixel_positions(geom, s_idx, f_idx, self.oversample, component_major=True)  # m
        d_c, r_inv = unit_directions(pos_c, keep)                              # (3, n, O², T) unit, (n, O², T) 1/m
        q_c = scattering_vectors(d_c, incident, wavelength, keep)              # (3, n, O², T, S) 1/m
        if self._fast:  # square lattice, nearest-neighbour F: lattice_sum.py
            table = fvals if has_grid else None
            if tape is None:
                i_src = square_lattice_sum(q_c.reshape(3, -1), rot, n_cells, table, self._grid, self.lattice_rows,
                                           keep=keep)
            else:
                i_src = tape.lattice_sum(q_c.reshape(3, -1), rot, n_cells, table, self._grid, self.lattice_rows)
            i_src = i_src.view(q_c.shape[1:])                                  # (n, O², T, S)
            if not has_grid:
                i_src = i_src * (default_F * default_F)
        else:
            hkl = torch.einsum("x...,kix->...ki", q_c, rot)                    # (n, O², T, S, K, 3)
            f_latt = lattice_factor(hkl, n_cells, cfg.crystal.shape, cfg.crystal.fudge, recip_A)
            if has_grid:
                sf = StructureFactors(fvals, self._grid_lower, default_F, self.interpolate)
                intensity = (sf(hkl) * f_latt) ** 2
            else:
                intensity = default_F * default_F * f_latt * f_latt
            i_src = intensity.sum(-1)                                          # (n, O², T, S)
        dmin = cfg.detector.dmin_A
        if dmin is not None and dmin > 0:
            stol = 0.5 * torch.sqrt((q_c * q_c).sum(0))
            cut = (stol > 0) & (stol * (2.0 * dmin * 1e-10) > 1.0)  # 0.5/stol < dmin: skip this source
            i_src = torch.where(cut, torch.zeros_like(i_src), i_src)
        kahn, nopolar = cfg.beam.polarization, cfg.beam.nopolar
        if self.physical:
            omega = product(*solid_angle_factors(geom, r_inv))                 # (n, O², T)
            cap = torch.diagonal(capture_fractions(geom, d_c, component_major=True), dim1=-2, dim2=-1)
            polar = polarization_factor(incident, d_c, geom.polar, kahn, nopolar=nopolar,
                                        component_major=True)                  # (n, O², T, S)
            weight = polar * (omega * cap).unsqueeze(-1)
            total = (i_src * weight).sum((1, 2, 3)) * scale
            if water > 0:
                mean_w = weight.sum((1, 2, 3)) / (weight.shape[1] * weight.shape[3])
                total = total + scale * self.steps * WATER_F ** 2 * water * mean_w
            return total
        # nanobragg: P, Ω of the first subpixel/layer/source, capture of the last layer (PHYSICS.md §1.1, §1.7)
        if d_c.shape[2] * d_c.shape[3] == 1:  # one subpixel and layer: views (their backward needs no zero fill)
            d_first = d_last = d_c.view(3, -1)
            r_inv_first = r_inv.view(-1)
        else:
            d_first, d_last = d_c[:, :, 0, 0], d_c[:, :, 0, -1]
            r_inv_first = r_inv[:, 0, 0]
        polar = polarization_factor(incident[0], d_first, geom.polar, kahn, nopolar=nopolar, component_major=True)
        omega = solid_angle_factors(geom, r_inv_first)
        cap = (capture_fractions(geom, d_last, component_major=True)[:, -1],) if absorbs(geom) else ()
        acc = i_src.reshape(i_src.shape[0], -1).sum(1) if i_src[0].numel() > 1 else i_src.reshape(-1)
        if water > 0:
            acc = acc + scale * self.steps * WATER_F ** 2 * water  # I_bg, scaled again below (§1.11)
        # acc · scale · P · Ω · capture; product.py keeps only the factors for the backward pass
        return product(acc, scale, polar, *omega, *cap)


class _LatticeTape:
    """The square-lattice sum's values and Jacobians of every chunk, from the forward pass for the backward.

    Recording (``cursor`` None): :meth:`lattice_sum` computes the value and the Jacobians flagged by
    ``need`` = (q, rot, n_cells, table) (lattice_sum.py) and keeps them (in ``keep``'s buffers when
    given). Replaying (``cursor`` an int, chunks in the same order): it returns them as a
    differentiable function of its inputs, computing nothing.
    """

    def __init__(self, need: tuple[bool, bool, bool, bool], keep=None) -> None:
        self.need = need
        self.keep = keep
        self.items: list = []
        self.cursor: int | None = None

    def lattice_sum(self, q: Tensor, rot: Tensor, n_cells: Tensor, table: Tensor | None, grid, rows: int) -> Tensor:
        if self.cursor is None:
            value, jacobians = square_lattice_jacobians(q, rot, n_cells, table, grid, self.need, rows, self.keep)
            self.items.append((value, jacobians))
            return value
        value, jacobians = self.items[self.cursor]
        self.cursor += 1
        return square_lattice_sum(q, rot, n_cells, table, grid, rows, jacobians=jacobians, value=value)


class _ImageFunction(torch.autograd.Function):
    """The flat image as a function of the simulator's input tensors, with a chunked backward.

    forward: saves the (small) inputs, and what :meth:`Simulator._backward_plan` says fits in part
    of the memory budget. "graph": every chunk is evaluated with autograd on the geometry (the
    square kernel's analytic Jacobians, lattice_sum.py, stand in for its graph) and the graphs are
    kept; backward differentiates them chunk by chunk. "tape": every chunk without autograd, keeping
    the lattice Jacobians; backward evaluates each chunk's geometry again with autograd and replays
    them. "recompute": every chunk without autograd; backward evaluates each chunk again with
    autograd (Jacobians included) and differentiates it at once, so peak memory is that of one
    chunk, whatever the image size. Not twice differentiable. What "graph" and "tape" keep lives in
    the simulator's reusable buffers (saved_buffers.py) when they are free, until the backward pass.
    """

    @staticmethod
    def forward(ctx, sim: Simulator, static, *tensors: Tensor) -> Tensor:
        ctx.sim, ctx.static = sim, static
        ctx.save_for_backward(*tensors)
        needs = ctx.needs_input_grad[2:]
        plan, need = sim._backward_plan(static[1], needs)
        ctx.graph = ctx.tape = None
        ctx.lease = sim._saved.lease() if plan != "recompute" else None
        buffers = None if ctx.lease is None else ctx.lease.buffers
        if plan == "graph":
            image, ctx.graph = sim._evaluate_graph(static, tensors, needs, buffers)
            return image
        ctx.tape = _LatticeTape(need, None if buffers is None else buffers.take) if plan == "tape" else None
        return sim._evaluate(static, tensors, ctx.tape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_image: Tensor):
        sim, static, need = ctx.sim, ctx.static, ctx.needs_input_grad[2:]
        grad_flat = _flat(grad_image)
        if ctx.graph is not None:
            leaves, outs = ctx.graph
            ctx.graph = None  # each chunk's graph is freed once differentiated; a second backward recomputes
            parts = (torch.autograd.grad(out, _wanted(leaves, need), grad_flat[idx], allow_unused=True)
                     for idx, out in _drain(outs))
        else:
            leaves = tuple(t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, need))
            tape, ctx.tape = ctx.tape, None  # released after use; a second backward recomputes
            parts = _recomputed_grads(sim, static, leaves, need, grad_flat, tape)
        total: list[Tensor | None] = [None] * sum(need)
        for part in parts:
            total = [g if t is None else (t if g is None else t + g) for t, g in zip(total, part)]
        lease: _Lease | None = ctx.lease
        if lease is not None:  # what was kept has been used: the buffers serve the next call
            ctx.lease = None
            lease.end()
        grads = iter(total)
        return (None, None, *(next(grads) if n else None for n in need))


def _flat(grad: Tensor) -> Tensor:
    """``grad`` as a 1-D tensor, a view where possible: the gradient of a sum is one value broadcast
    (strides 0), which ``reshape`` would copy into a whole fresh image."""
    if grad.numel() > 1 and all(st == 0 for st in grad.stride()):
        return grad.as_strided((grad.numel(),), (0,))
    return grad.reshape(-1)


def _wanted(leaves: tuple[Tensor, ...], need: tuple[bool, ...]) -> list[Tensor]:
    return [t for t, n in zip(leaves, need) if n]


def _drain(items: list):
    """Yield and drop the items of ``items`` one by one (what they hold is freed as the loop goes)."""
    while items:
        yield items.pop(0)


def _recomputed_grads(sim: Simulator, static, leaves: tuple[Tensor, ...], need: tuple[bool, ...],
                      grad_flat: Tensor, tape: _LatticeTape | None):
    """Per chunk, the gradients of the wanted leaves from a fresh evaluation with autograd (tape replayed)."""
    kernel = sim._kernel() if tape is None else sim._chunk_kernel
    if tape is not None:
        tape.cursor = 0
    for idx, count in sim._chunks():
        with torch.enable_grad():
            out = kernel(idx, *static, *leaves, tape=tape)[:count]
        yield torch.autograd.grad(out, _wanted(leaves, need), grad_flat[idx[:count]], allow_unused=True)


def simulate(config: SimulationConfig, params: Mapping[str, Tensor] | None = None, *,
             dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
             compile: bool = False) -> Tensor:
    """One image (spixels, fpixels) in photons/pixel: ``Simulator(config, ...)(params)``."""
    return Simulator(config, dtype=dtype, device=device, compile=compile)(params)
