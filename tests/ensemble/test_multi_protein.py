"""One model for several proteins: training on two ensembles of different lengths, per-protein
files and sampling by name, resume; data parallel training under torchrun (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from equipoise.ensemble.io import Ensemble, read_ensemble, write_ensemble
from equipoise.ensemble.sample import SampleConfig, sample
from equipoise.ensemble.train import load_model, train
from equipoise.errors import InputError

from tests.ensemble.backbones import ideal_ensemble
from tests.core.test_distributed import _free_port
from tests.ensemble.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def two_proteins(tmp_path: Path) -> list[Path]:
    """Two small ensembles (8 and 11 residues, different sequences) written as PDB files."""
    first = ideal_ensemble(n_models=6, n_res=8, spread_deg=10.0, seed=11)
    second = ideal_ensemble(n_models=7, n_res=11, spread_deg=8.0, seed=12, sequence="GSHMKLAEWRP")
    paths = [tmp_path / "alpha.pdb", tmp_path / "beta.pdb"]
    for ensemble, path in zip((first, second), paths):
        write_ensemble(ensemble, path)
    return paths


def test_one_model_learns_two_proteins_and_samples_each(tmp_path) -> None:
    torch.set_num_threads(1)
    ensembles = [read_ensemble(p) for p in two_proteins(tmp_path)]
    out = tmp_path / "run"
    first = train(ensembles, out, tiny_config(steps=6), progress="quiet", max_steps=3)
    assert first.steps == 3 and first.n_train == 5 + 6 and first.n_holdout == 1 + 1
    assert [p["name"] for p in first.proteins] == ["alpha_A", "beta_A"]
    split = json.loads((out / "split.json").read_text())
    assert [p["holdout_file"] for p in split["proteins"]] == ["holdout_alpha_A.pdb", "holdout_beta_A.pdb"]
    assert read_ensemble(out / "holdout_beta_A.pdb", min_models=1).sequence == "GSHMKLAEWRP"
    done = train(ensembles, out, tiny_config(steps=6), progress="quiet")
    assert done.completed and done.steps == 6
    assert "resumed from checkpoint at step 3" in (out / "fit" / "run.log").read_text()
    metrics = done.validation["last"]["metrics"]
    assert {"recon_rmsd_A", "alpha_A/recon_rmsd_A", "beta_A/prior_spread_ratio"} <= set(metrics)
    model, payload = load_model(out)
    assert model.n_proteins == 2 and [e["sequence"] for e in payload["proteins"]] == [e.sequence for e in ensembles]
    beta = sample(out, SampleConfig(n=3, seed=1, refine_steps=0), protein="beta_A")
    assert beta.ensemble.coords.shape == (3, 11, 4, 3) and beta.ensemble.sequence == "GSHMKLAEWRP"
    assert sample(out, SampleConfig(n=2, seed=1, refine_steps=0), protein=0).ensemble.n_res == 8
    with pytest.raises(InputError, match="trained on 2 proteins: choose one with --protein"):
        sample(out, SampleConfig(n=2, refine_steps=0))
    with pytest.raises(InputError, match="no protein 'gamma'"):
        sample(out, SampleConfig(n=2, refine_steps=0), protein="gamma")


def test_cli_topology_needs_one_trajectory(tmp_path, capsys) -> None:
    from equipoise.cli import main

    paths = two_proteins(tmp_path)
    code = main(["ensemble", "train", str(paths[0]), str(paths[1]), "--topology", str(paths[0]), "--out",
                 str(tmp_path / "x")])
    assert code == 2 and "--topology reads one trajectory, got 2" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_trains_two_proteins_data_parallel(tmp_path) -> None:
    """`torchrun --nproc_per_node=2 -m equipoise ensemble train A B`: two gloo processes, rank 0
    writes the run; the model samples both proteins."""
    paths = two_proteins(tmp_path)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "equipoise", "ensemble", "train", *map(str, paths), "--out", str(out), "--steps", "6",
               "--batch-size", "2", "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "fit" / "run.log").read_text()
    assert "data parallel over 2 processes" in log
    assert json.loads((out / "fit" / "config.json").read_text())["config"]["world_size"] == 2
    model, _ = load_model(out)
    assert model.n_proteins == 2
    assert sample(out, SampleConfig(n=2, refine_steps=0), protein="beta_A").ensemble.n_res == 11
