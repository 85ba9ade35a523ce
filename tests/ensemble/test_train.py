"""Training: seeded split, pairs, a tiny run end to end on core, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from equipoise.ensemble.io import Ensemble, three_letter
from equipoise.ensemble.model import VAEConfig
from equipoise.ensemble.train import MODEL_FILE, PairDataset, TrainConfig, load_model, split_models, train
from equipoise.errors import InputError

from test_equivariance import _helix_backbone

TINY = VAEConfig(hidden=16, latent=4, residue_latent=1, encoder_depth=1, decoder_depth=2, k=4)


def tiny_ensemble(n_models: int = 6, n_res: int = 8) -> Ensemble:
    coords = _helix_backbone(n_res, n_models, 11)
    sequence = "MQIFVKTLTGKTIT"[:n_res]
    return Ensemble(coords, torch.ones(n_models, n_res, 4, dtype=torch.bool), sequence,
                    tuple(three_letter(c) for c in sequence), tuple(str(i + 1) for i in range(n_res)), "A",
                    "tiny helix ensemble", tuple(range(1, n_models + 1)))


def tiny_config(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, minutes=2.0, batch_size=3, checkpoint_every=2, log_every=1, validate_every=2,
                       warmup=2, model=TINY)


def test_split_is_seeded_and_disjoint() -> None:
    train_idx, hold = split_models(116, 0.2, seed=1)
    assert len(hold) == 23 and len(train_idx) == 93 and not set(train_idx) & set(hold)
    assert split_models(116, 0.2, seed=1) == (train_idx, hold)
    assert split_models(116, 0.2, seed=2) != (train_idx, hold)
    with pytest.raises(InputError, match="fewer than 2"):
        split_models(2, 0.5, seed=1)


def test_pairs_are_distinct_models() -> None:
    pairs = PairDataset(4)
    items = [pairs[k] for k in range(len(pairs))]
    assert len(items) == 12 == len(set(items)) and all(a != b for a, b in items)


def test_tiny_training_writes_model_and_resumes(tmp_path) -> None:
    torch.set_num_threads(1)
    ensemble = tiny_ensemble()
    result = train(ensemble, tmp_path, tiny_config(steps=5), progress="quiet", max_steps=1)
    assert result.steps == 1 and not result.completed and result.n_holdout == 1 and result.n_train == 5
    assert (tmp_path / MODEL_FILE).is_file() and (tmp_path / "holdout.pdb").is_file()
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["holdout_models"]) == 1
    lines = (tmp_path / "fit" / "record.jsonl").read_text().splitlines()
    assert "active_units" in json.loads(lines[-1])["params"]
    model, payload = load_model(tmp_path)
    assert payload["sequence"] == ensemble.sequence and payload["templates"].shape == (1, 8, 4, 3)
    more = train(ensemble, tmp_path, tiny_config(steps=5), progress="quiet")
    assert more.steps == 5 and more.completed
    assert set(more.validation["last"]["metrics"]) == {"recon_rmsd_A", "prior_spread_ratio"}
    assert "resumed from checkpoint at step 1" in (tmp_path / "fit" / "run.log").read_text()


def test_bad_settings_are_input_errors(tmp_path) -> None:
    with pytest.raises(InputError, match="holdout"):
        train(tiny_ensemble(), tmp_path, TrainConfig(holdout=1.5))
    with pytest.raises(InputError, match="minutes"):
        train(tiny_ensemble(), tmp_path, TrainConfig(minutes=-1))
    with pytest.raises(InputError, match="load_model|no trained model"):
        load_model(tmp_path / "missing")
