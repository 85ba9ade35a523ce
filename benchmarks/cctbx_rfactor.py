"""R-work/R-free of a model by cctbx ``mmtbx.f_model`` after ``update_all_scales()`` (the peer).

Run with a Python that has cctbx (``pip install cctbx-base``; not an equipoise dependency):
    python benchmarks/cctbx_rfactor.py MODEL DATA OBS,SIGOBS FREE FREE_VALUE
Prints one JSON line: {"r_work", "r_free", "n"} with cctbx's default outlier rejection,
{"r_work_all", "r_free_all", "n_all"} without it (like for like with ours), "seconds". Intensities (MTZ type J) are converted by
cctbx's own French-Wilson. Gzipped inputs are decompressed to a temporary directory.

cctbx's ``r_free()`` rescales the free set's F_model by its own least-squares scale (k1_t, the
``_scale_helper`` of ``f_model_scaled_with_k1_t``); ``r_work()`` likewise with k1_w (≈ 1 after
``update_all_scales``). "r_free_wscale" / "r_free_all_wscale" score the same cctbx F_model on
the free set with the working-set scale k1_w instead: the definition equipoise's ``r_free`` uses.
"k1_t" / "k1_w" are those scales (without outlier rejection).
"""

import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _plain(path: str, tmp: str) -> str:
    if not path.endswith(".gz"):
        return path
    out = Path(tmp) / Path(path).name[:-3]
    with gzip.open(path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return str(out)


def main() -> None:
    import iotbx.mtz
    import iotbx.pdb
    import mmtbx.bulk_solvent
    import mmtbx.f_model

    model, data, obs_labels, free_label, free_value = sys.argv[1:6]
    with tempfile.TemporaryDirectory() as tmp:
        model, data = _plain(model, tmp), _plain(data, tmp)
        start = time.time()
        arrays = iotbx.mtz.object(data).as_miller_arrays()
        obs_first = obs_labels.split(",")[0]
        f_obs = next(a for a in arrays if obs_first in a.info().labels)
        flags = next(a for a in arrays if free_label in a.info().labels)
        symmetry = f_obs.crystal_symmetry()
        if f_obs.is_xray_intensity_array():
            f_obs = f_obs.french_wilson()
        f_obs = f_obs.map_to_asu()
        flags = flags.map_to_asu()
        f_obs, flags = f_obs.common_sets(flags)
        flags = flags.customized_copy(data=flags.data() == int(free_value))
        xrs = iotbx.pdb.input(file_name=model).xray_structure_simple(crystal_symmetry=symmetry)
        result = {}
        for remove_outliers in (True, False):
            fmodel = mmtbx.f_model.manager(f_obs=f_obs, r_free_flags=flags, xray_structure=xrs)
            fmodel.update_all_scales(remove_outliers=remove_outliers)
            key = "" if remove_outliers else "_all"
            k1_w = fmodel.scale_k1_w()
            r_free_wscale = mmtbx.bulk_solvent.r_factor(fmodel.f_obs_free().data(), fmodel.f_model_free().data(), k1_w)
            result.update({f"r_work{key}": fmodel.r_work(), f"r_free{key}": fmodel.r_free(),
                           f"r_free{key}_wscale": r_free_wscale, f"n{key}": fmodel.f_obs().size(),
                           "k1_w": k1_w, "k1_t": fmodel.scale_k1_t()})
        result["seconds"] = time.time() - start
        print(json.dumps(result))


if __name__ == "__main__":
    main()
