"""The transformer: shapes, float64 phases, cached decoding equals full decoding, save/load."""

from dataclasses import replace

import pytest
import torch

from equipoise.errors import InputError
from equipoise.peptide.model import (ModelConfig, PeptideTransformer, SinusoidalEncoder, collate, load_model,
                                     prepare, save_model)
from equipoise.peptide.synth import synthesize
from equipoise.peptide.vocab import DEFAULT_VOCABULARY, Vocabulary

TINY = ModelConfig(d_model=32, n_heads=2, dim_feedforward=32, encoder_layers=1, decoder_layers=2, max_peaks=32)


def _batch(n: int = 4, seed: int = 3):
    return collate([prepare(s, DEFAULT_VOCABULARY, TINY) for s in synthesize(n, seed)])


def test_shapes_and_vocabulary() -> None:
    torch.manual_seed(0)
    model = PeptideTransformer(DEFAULT_VOCABULARY, TINY)
    batch = _batch()
    logits = model(batch)
    assert logits.shape == (4, batch.tokens.shape[1] + 1, len(DEFAULT_VOCABULARY))
    assert batch.mz.shape[1] <= TINY.max_peaks
    assert model.vocab is DEFAULT_VOCABULARY
    assert torch.equal(model.token_masses, DEFAULT_VOCABULARY.mass_tensor(dtype=torch.float64, device="cpu"))


def test_finest_wavelength_resolves_a_millidalton_at_2000() -> None:
    enc = SinusoidalEncoder(64, 0.001, 10000.0)
    a, b = enc(torch.tensor([2000.0000], dtype=torch.float64)), enc(torch.tensor([2000.0005], dtype=torch.float64))
    # half the shortest wavelength apart: the first sine flips sign, which float32 phases would not resolve
    assert float((a - b).abs().max()) > 1.0


@pytest.mark.parametrize("prefix_mass", [False, True])
def test_cached_decoding_equals_full_decoding(prefix_mass: bool) -> None:
    torch.manual_seed(1)
    model = PeptideTransformer(DEFAULT_VOCABULARY, replace(TINY, prefix_mass=prefix_mass)).eval()
    assert (model.prefix_projection is not None) == prefix_mass
    batch = _batch()
    with torch.no_grad():
        memory = model.encode(batch.mz, batch.intensity, batch.peak_padding, batch.precursor_mass, batch.charge)
        full, _ = model.decode(memory, batch.tokens)
        cache, steps = None, []
        for t in range(batch.tokens.shape[1] + 1):
            logits, cache = model.decode(memory, batch.tokens[:, :t], cache)
            steps.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_save_load_roundtrip_and_vocabulary_check(tmp_path) -> None:
    torch.manual_seed(2)
    model = PeptideTransformer(DEFAULT_VOCABULARY, TINY).eval()
    path = save_model(model, tmp_path / "m.pt")
    again = load_model(path)
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again(batch), model(batch))
    other = Vocabulary(residues=DEFAULT_VOCABULARY.residues[:-1])
    with pytest.raises(InputError, match="another vocabulary"):
        load_model(path, vocab=other)
    (tmp_path / "bad.pt").write_text("not a model")
    with pytest.raises(InputError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="unknown model setting"):
        ModelConfig.from_dict({"d_modle": 3})


def test_grouped_beam_rows_read_their_own_spectrum() -> None:
    torch.manual_seed(3)
    model = PeptideTransformer(DEFAULT_VOCABULARY, TINY).eval()
    batch = _batch()
    with torch.no_grad():
        memory = model.encode(batch.mz, batch.intensity, batch.peak_padding, batch.precursor_mass, batch.charge)
        grouped = memory.repeat(3)
        rows = torch.arange(4).repeat_interleave(3)
        repeated = type(memory)([(k[rows], v[rows]) for k, v in memory.layers], memory.mask[rows],
                                grouped.precursor_mass, grouped.charge)
        tokens = batch.tokens[rows, :5]
        torch.testing.assert_close(model.decode(grouped, tokens)[0], model.decode(repeated, tokens)[0])
