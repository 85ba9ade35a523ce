"""Training on core's Fit: record has shares, weights and gradient norms; validation; resume; recipes."""

import json
from dataclasses import replace

import pytest
import torch

from equipoise.errors import InputError
from equipoise.peptide.io import write_mgf
from equipoise.peptide.model import ModelConfig, load_model
from equipoise.peptide.synth import synthesize
from equipoise.peptide.train import TrainConfig, load_recipe, train

TINY = ModelConfig(d_model=32, n_heads=2, dim_feedforward=32, encoder_layers=1, decoder_layers=1, max_peaks=32)


def _config(**changes) -> TrainConfig:
    base = TrainConfig(batch_size=8, steps=12, warmup_steps=4, checkpoint_every=4, validate_every=4,
                       val_spectra=8, rebalance_every=4, grad_every=2, model=TINY,
                       curriculum={"spectrum": [[0, 0.0], [4, 1.0]], "precursor": [[0, 0.0], [4, 1.0]]})
    return replace(base, **changes)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return write_mgf(folder / "train.mgf", synthesize(40, seed=21)), write_mgf(folder / "val.mgf", synthesize(8, seed=22))


def test_training_records_shares_gradients_and_validation(data, tmp_path) -> None:
    torch.set_num_threads(1)
    result = train(*data, tmp_path / "run", _config(), progress="quiet")
    assert result.ended == "steps" and result.steps == 12
    lines = [json.loads(l) for l in (tmp_path / "run" / "record.jsonl").read_text().splitlines()]
    assert {"ce", "spectrum", "precursor"} <= set(lines[-1]["terms"])
    assert any("grad_norms" in l and l["grad_norms"]["precursor"]["model"] > 0 for l in lines)
    late = [l for l in lines if l["step"] >= 8]
    shares = late[-1]["terms"]
    assert abs(sum(t["share"] for t in shares.values()) - 1) < 1e-6
    assert all(t["weight"] > 0 for t in shares.values())
    # CE alone during the curriculum's first steps: core flags the dominance
    assert any(f["kind"] == "dominance" for l in lines[:4] for f in l.get("flags", []))
    validation = [(l["step"], l["validation"]) for l in lines if "validation" in l]
    assert [step for step, _ in validation] == [3, 7, 11]          # after steps 4, 8, 12 (0-based record)
    assert all(0 <= v["peptide_recall"] <= 1 and v["val_ce"] > 0 for _, v in validation)
    assert all("lr" in l for l in lines) and lines[0]["lr"] < lines[4]["lr"]      # warm-up
    assert set(result.validation["best"]) >= {"peptide_recall", "val_ce"}
    model = load_model(result.best_model_path)
    assert model.config == TINY


def test_resume_continues_to_the_same_parameters(data, tmp_path, monkeypatch) -> None:
    torch.set_num_threads(1)
    straight = train(*data, tmp_path / "a", _config(), progress="quiet")
    from equipoise.core import Fit
    run = Fit.run
    monkeypatch.setattr(Fit, "run", lambda self, resume=True: run(self, resume=resume, max_steps=5))
    train(*data, tmp_path / "b", _config(), progress="quiet")          # stopped after 5 steps, as if killed
    monkeypatch.setattr(Fit, "run", run)
    second = train(*data, tmp_path / "b", _config(), progress="quiet")
    assert second.steps == 12
    a, b = load_model(straight.model_path), load_model(second.model_path)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_recipe_errors_and_lr_plan(tmp_path) -> None:
    config = load_recipe()
    assert config.model.max_peaks == 64 and set(config.terms) == {"ce", "spectrum", "precursor"}
    assert config.clip_grad_norm == 1.0 and config.warmup_steps < config.steps
    ablation = load_recipe(load_recipe.__globals__["DEFAULT_RECIPE"].with_name("ablation_ce.toml"))
    assert set(ablation.terms) == {"ce"} and ablation.shares is None and not ablation.curriculum
    assert replace(ablation, terms=config.terms, shares=config.shares, curriculum=config.curriculum) == config
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = 1e-3\nlearning_rate = 2\n")
    with pytest.raises(InputError, match="learning_rate"):
        load_recipe(bad)
    bad.write_text("[model]\nd_modle = 3\n")
    with pytest.raises(InputError, match="d_modle"):
        load_recipe(bad)
    with pytest.raises(InputError, match="shares"):
        _config(shares={"ce": 1.0}).check()


def test_unlabelled_training_file_is_an_input_error(tmp_path) -> None:
    spectra = synthesize(10, seed=3)
    for s in spectra:
        s.tokens = None
    path = write_mgf(tmp_path / "unlabelled.mgf", spectra)
    with pytest.raises(InputError, match="SEQ"):
        train(path, path, tmp_path / "run", _config(), progress="quiet")
