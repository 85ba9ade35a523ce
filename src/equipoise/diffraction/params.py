"""The differentiable-parameter mapping of the simulator.

Refinement and gradient checks override configuration values with tensors passed as
``params: Mapping[str, Tensor]`` in user units; a name that is absent falls back to the
configuration. Names (shape): ``cell`` (6,) Å/deg, ``misset_deg`` (3,), ``mosaic_spread_deg`` (),
``n_cells`` (3,), ``wavelength_A`` (), ``distance_mm`` (), ``beam_center_mm`` (2,) = (Xbeam, Ybeam)
of the convention, ``detector_rot_deg`` (3,), ``twotheta_deg`` (), ``fluence`` () photons/m²,
``F`` (shape of the HKL grid), ``default_F`` ().
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor


def param_tensor(params: Mapping[str, Tensor] | None, name: str, default, *, dtype: torch.dtype,
                 device: torch.device) -> Tensor:
    """``params[name]`` moved to ``dtype``/``device`` (its gradient kept), else ``default`` as a constant."""
    if params is not None and name in params:
        return torch.as_tensor(params[name]).to(dtype=dtype, device=device)
    return torch.as_tensor(np.asarray(default, dtype=np.float64), dtype=dtype, device=device)
