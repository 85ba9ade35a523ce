"""Two CPU processes (gloo) training the peptide model stay in sync.

Relies on core's DDP (``equipoise.core.distributed``, branch core-training, /work/TRAINING_API.md);
skips with a message where this checkout's core has none yet.
"""

import importlib.util

import pytest

HAS_DDP = importlib.util.find_spec("equipoise.core.distributed") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DDP, reason="equipoise.core.distributed (core-training) not merged into this branch yet")
def test_two_processes_stay_in_sync(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    import torch

    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def _worker(rank: int, world: int, folder: str) -> None:  # pragma: no cover - runs in the children
    import os

    import torch

    from equipoise.core import distributed
    from equipoise.peptide.model import ModelConfig, PeptideTransformer, prepare
    from equipoise.peptide.synth import synthesize
    from equipoise.core.data import Batches
    from equipoise.peptide.model import collate
    from equipoise.peptide.train import TrainConfig, build_fit
    from equipoise.peptide.vocab import DEFAULT_VOCABULARY

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT="29533")
    torch.set_num_threads(1)
    context = distributed.setup()
    config = TrainConfig(batch_size=4, steps=4, warmup_steps=0, checkpoint_every=4, validate_every=4,
                         model=ModelConfig(d_model=32, n_heads=2, dim_feedforward=32, encoder_layers=1,
                                           decoder_layers=1, max_peaks=32))
    torch.manual_seed(rank)  # different initial weights: the fit must broadcast rank 0's
    model = PeptideTransformer(DEFAULT_VOCABULARY, config.model)
    items = [prepare(s, DEFAULT_VOCABULARY, config.model) for s in synthesize(16, seed=5)]
    build_fit(model, Batches(items, 4, seed=5, collate=collate), config, None, progress="quiet").run()
    torch.save(model.state_dict(), f"{folder}/rank{context.rank}.pt")
    distributed.teardown()


@pytest.mark.slow
def test_torchrun_train_command_runs_data_parallel(tmp_path) -> None:
    """`torchrun --nproc_per_node=2 -m equipoise peptide train ...`: the command itself sets up the
    process group (gloo), rank 0 writes the run."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from equipoise.peptide.io import write_mgf
    from equipoise.peptide.synth import synthesize
    from tests.core.test_distributed import _free_port

    root = Path(__file__).resolve().parents[2]
    write_mgf(tmp_path / "train.mgf", synthesize(16, seed=5))
    write_mgf(tmp_path / "val.mgf", synthesize(4, seed=6))
    (tmp_path / "tiny.toml").write_text(
        "batch_size = 4\nsteps = 4\nwarmup_steps = 0\ncheckpoint_every = 4\nvalidate_every = 4\nval_spectra = 4\n"
        "[model]\nd_model = 32\nn_heads = 2\ndim_feedforward = 32\nencoder_layers = 1\ndecoder_layers = 1\n"
        "max_peaks = 32\n")
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{root / 'src'}{os.pathsep}{root}")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           "-m", "equipoise", "peptide", "train", "--train", str(tmp_path / "train.mgf"),
                           "--val", str(tmp_path / "val.mgf"), "--out", str(tmp_path / "run"),
                           "--config", str(tmp_path / "tiny.toml"), "--threads", "1", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "data parallel over 2 processes" in (tmp_path / "run" / "run.log").read_text()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 4
    assert (tmp_path / "run" / "model.pt").is_file()
