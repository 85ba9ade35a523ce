"""Structure factors + gradient: equipoise's FFT path vs gemmi's density + FFT, same run.

Cases: PDB 1L2H (1,294 atoms, P4_3, its 31,781 reflections to 1.54 Å) and the first 2,000 atoms
of 1A0F (P2_12_12_1) on all reflections to 1.5 Å of its cell (~63k, above the issue's ~40k), then
the same atoms in a monoclinic (P2_1, beta 105°) and a trigonal (P3_221, gamma 120°) cell, whose
oblique axes take the other spreading path.
Ours: F_calc at the hkl plus the backward pass of sum w|F|^2 (gradients in xyz, B, occupancy).
gemmi: DensityCalculatorX + transform_map_to_f_phi + reading the hkl (forward only: gemmi has no
gradient). Prints seconds (median of 3, wall and process CPU), their ratios, amplitude R between
the two, and the peak resident memory of this process. On a machine that other jobs load, run
with 1 thread: torch's 2-thread ops then wait on a descheduled thread (measured 6x slower). Usage: python benchmarks/xtal_structure_factors.py [THREADS]
(default 2; the bar is <= 0.5 s and <= 1 GB on 2 cores).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import gemmi
import numpy as np
import torch

from equipoise.xtal.model import AtomModel
from equipoise.xtal.reflections import Reflections
from equipoise.xtal.structure_factors import FFTStructureFactors

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "xtal"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gemmi_sf(st: gemmi.Structure, hkl: np.ndarray, d_min: float) -> np.ndarray:
    dc = gemmi.DensityCalculatorX()
    dc.d_min = d_min
    dc.rate = 1.5
    dc.set_refmac_compatible_blur(st[0])
    dc.grid.setup_from(st)
    dc.put_model_density_on_grid(st[0])
    grid = gemmi.transform_map_to_f_phi(dc.grid)
    values = np.array(grid, copy=False)
    n = np.array(values.shape)
    picked = values[tuple((hkl % n).T)]
    d = np.asarray(st.cell.calculate_d_array(hkl.astype(np.int32)))
    return picked * np.exp(dc.blur / d ** 2 / 4.0)


def _timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall seconds of ``fn`` and its last result; the process CPU seconds go to CPU."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU.append(statistics.median(cpu))
    return statistics.median(times), out


CPU: list[float] = []


def case(name: str, model: AtomModel, hkl: torch.Tensor, cell, sg) -> None:
    sf = FFTStructureFactors(hkl, cell, sg, model.elements)
    w = torch.rand(hkl.shape[0], dtype=torch.float64)

    def ours():
        p = [t.clone().requires_grad_() for t in (model.xyz, model.b_iso, model.occ)]
        f = sf(*p)
        (w * f.abs() ** 2).sum().backward()
        return f.detach()

    def ours_forward():
        with torch.no_grad():
            return sf(model.xyz, model.b_iso, model.occ)

    st = model.to_structure()
    hkl_np = hkl.numpy()
    t_ours, f = _timed(ours)
    t_fwd, _ = _timed(ours_forward)
    t_gemmi, g = _timed(lambda: _gemmi_sf(st, hkl_np, float(1 / np.sqrt((1 / np.asarray(
        cell.calculate_d_array(hkl_np.astype(np.int32))) ** 2).max()))))
    r = float(np.abs(np.abs(f.numpy()) - np.abs(g)).sum() / np.abs(g).sum())
    print(f"{name}: {model.n_atoms} atoms, {hkl.shape[0]} reflections, grid {sf.shape}, "
          f"B_add {sf.last_plan.b_add:.1f}")
    c_ours, _, c_gemmi = CPU[-3:]
    print(f"  ours F+gradient {t_ours:.3f} s (forward {t_fwd:.3f} s); gemmi F only {t_gemmi:.3f} s; "
          f"ratio ours(F+grad)/gemmi(F) {t_ours / t_gemmi:.2f} (process CPU {c_ours:.3f} s vs "
          f"{c_gemmi:.3f} s: {c_ours / c_gemmi:.2f}); amplitude R ours vs gemmi {r:.2e}; "
          f"peak RSS so far {_rss_mb():.0f} MB")


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    print(f"threads {threads}; baseline RSS after imports {_rss_mb():.0f} MB (machine shared: compare ratios)")
    model = AtomModel.from_file(DATA / "1l2h.cif.gz")
    refl = Reflections.from_file(DATA / "1l2h.mtz.gz")
    case("1l2h", model, refl.hkl, refl.cell, refl.spacegroup)
    big = AtomModel.from_file(DATA / "1a0f" / "1a0f_round0.pdb")
    refl = Reflections.from_file(DATA / "1a0f" / "1a0f_data.mtz")
    st = big.structure
    st.cell, st.spacegroup_hm = refl.cell, refl.spacegroup.xhm()
    keep = gemmi.Structure()
    keep.cell, keep.spacegroup_hm = refl.cell, refl.spacegroup.xhm()
    count = 0
    m = gemmi.Model(1)
    for ch in st[0]:
        c = gemmi.Chain(ch.name)
        for res in ch:
            if count >= 2000:
                break
            c.add_residue(res)
            count += len(res)
        m.add_chain(c)
    keep.add_model(m)
    keep.remove_empty_chains()
    # the same atoms in 1A0F's own cell and in oblique ones (the spreading paths of monoclinic and
    # trigonal/hexagonal cells: one axis orthogonal to an oblique pair)
    for name, cell, sg in [("1a0f-2000@1.5A", refl.cell, refl.spacegroup),
                           ("1a0f-2000@1.5A in P21, beta 105", gemmi.UnitCell(90.65, 95.39, 51.21, 90, 105, 90),
                            gemmi.SpaceGroup("P 1 21 1")),
                           ("1a0f-2000@1.5A in P3221, gamma 120", gemmi.UnitCell(95.39, 95.39, 51.21, 90, 90, 120),
                            gemmi.SpaceGroup("P 32 2 1"))]:
        keep.cell, keep.spacegroup_hm = cell, sg.xhm()
        keep.setup_cell_images()
        sub = AtomModel.from_structure(keep)
        hkl = np.asarray(gemmi.make_miller_array(cell, sg, 1.5, 0, True))
        hkl = hkl[~np.asarray(sg.operations().systematic_absences(hkl), dtype=bool)]
        case(name, sub, torch.as_tensor(hkl, dtype=torch.int64), cell, sg)


if __name__ == "__main__":
    main()
