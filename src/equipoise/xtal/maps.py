"""Map coefficients in an MTZ that Coot reads: 2mFo-DFc as FWT/PHWT, mFo-DFc as DELFWT/PHDELWT.

m (figure of merit) and D come from the sigmaA likelihood (Read 1986): acentric
2mFo - DFc, centric mFo (no model bias to remove), difference mFo - DFc; phases of F_model.
Free reflections get DFc in FWT and 0 in DELFWT (their Fo is not used, as in phenix.refine).
The file also holds FP, SIGFP, FOM and FreeR_flag (CCP4 convention, 0 = free).
"""

from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np
import torch

from equipoise.errors import InputError

MAP_LABELS = ("FWT", "PHWT", "DELFWT", "PHDELWT")


def map_coefficients(f_obs: torch.Tensor, f_model: torch.Tensor, fom: torch.Tensor, d: torch.Tensor,
                     centric: torch.Tensor, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2mFo-DFc, mFo-DFc), each (m,) complex with the phases of ``f_model`` (m,) complex."""
    phase = torch.polar(torch.ones_like(f_obs), torch.angle(f_model))
    dfc = d * f_model.abs()
    mfo = fom * f_obs
    two = torch.where(centric, mfo, 2.0 * mfo - dfc)
    two = torch.where(free, dfc, two)
    diff = torch.where(free, torch.zeros_like(dfc), mfo - dfc)
    return two * phase, diff * phase


def write_map_mtz(path: str | Path, hkl: torch.Tensor, cell: gemmi.UnitCell, spacegroup: gemmi.SpaceGroup,
                  f_obs: torch.Tensor, sigma_f: torch.Tensor, free: torch.Tensor, fom: torch.Tensor,
                  two_fo_fc: torch.Tensor, fo_fc: torch.Tensor) -> Path:
    """Write the MTZ (atomically); columns FP SIGFP FreeR_flag FOM FWT PHWT DELFWT PHDELWT."""
    path = Path(path)
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = spacegroup
    mtz.set_cell_for_all(cell)
    mtz.add_dataset("equipoise")
    for label, kind in (("FP", "F"), ("SIGFP", "Q"), ("FreeR_flag", "I"), ("FOM", "W"), ("FWT", "F"),
                        ("PHWT", "P"), ("DELFWT", "F"), ("PHDELWT", "P")):
        mtz.add_column(label, kind)
    cols = [hkl.cpu().double().numpy(), f_obs, sigma_f, (~free).double(), fom, two_fo_fc.abs(),
            torch.rad2deg(torch.angle(two_fo_fc)), fo_fc.abs(), torch.rad2deg(torch.angle(fo_fc))]
    data = np.column_stack([c if isinstance(c, np.ndarray) else c.detach().cpu().double().numpy() for c in cols])
    mtz.set_data(data.astype(np.float32))
    tmp = path.with_name(path.name + ".tmp")
    try:
        mtz.write_to_file(str(tmp))
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:
        raise InputError(f"cannot write the map MTZ: {exc}", path=path) from exc
    return path
