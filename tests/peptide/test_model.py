"""The transformer: shapes, float64 phases, cached decoding equals full decoding, save/load."""

from dataclasses import replace

import pytest
import torch

from equipoise.errors import InputError
from equipoise.peptide.model import (ModelConfig, PeptideTransformer, SinusoidalEncoder, collate, ion_evidence,
                                     load_model, prepare, save_model)
from equipoise.peptide.vocab import PROTON_MASS
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


@pytest.mark.parametrize("cues", [False, True])
def test_cached_decoding_equals_full_decoding(cues: bool) -> None:
    torch.manual_seed(1)
    model = PeptideTransformer(DEFAULT_VOCABULARY, replace(TINY, prefix_mass=cues, ion_evidence=cues)).eval()
    assert (model.prefix_projection is not None) == cues and (model.evidence_projection is not None) == cues
    if cues:
        with torch.no_grad():
            model.evidence_logit.normal_()                  # zero at initialisation: make it matter
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
    model = PeptideTransformer(DEFAULT_VOCABULARY, replace(TINY, ion_evidence=True)).eval()
    with torch.no_grad():
        model.evidence_logit.normal_()
    batch = _batch()
    with torch.no_grad():
        memory = model.encode(batch.mz, batch.intensity, batch.peak_padding, batch.precursor_mass, batch.charge)
        grouped = memory.repeat(3)
        rows = torch.arange(4).repeat_interleave(3)
        repeated = type(memory)([(k[rows], v[rows]) for k, v in memory.layers], memory.mask[rows],
                                grouped.precursor_mass, grouped.charge, memory.mz[rows], memory.intensity[rows])
        tokens = batch.tokens[rows, :5]
        torch.testing.assert_close(model.decode(grouped, tokens)[0], model.decode(repeated, tokens)[0])


def test_ion_evidence_sees_the_ions_of_the_right_token() -> None:
    V = DEFAULT_VOCABULARY
    masses = V.mass_tensor(dtype=torch.float64, device="cpu")
    g, w = V.index("G"), V.index("W")
    prefix = torch.tensor([[0.0, 300.0]], dtype=torch.float64)          # (1 row, 2 positions)
    precursor = torch.tensor([1000.0], dtype=torch.float64)
    # b ion of G after the 300 Da prefix, y ion of W after the empty prefix, 4 ppm off; one far peak
    mz = torch.tensor([[300.0 + float(masses[g]) + PROTON_MASS + 0.0015,
                        1000.0 - float(masses[w]) + PROTON_MASS, 1500.0]], dtype=torch.float64)
    intensity = torch.tensor([[0.6, 0.5, 0.6]])
    for charge, doubly in ((2, 0.0), (3, 1.0)):
        e = ion_evidence(prefix, masses, precursor, torch.tensor([charge]), mz, intensity, sigma=0.01)
        assert e.shape == (1, 2, len(V), 4) and e.dtype == torch.float32
        assert float(e[0, 1, g, 0]) > 2.0 and float(e[0, 0, w, 1]) > 2.0     # the matching ions
        e[0, 1, g, 0] = e[0, 0, w, 1] = 0.0
        assert float(e[..., :2].max()) < 0.1                                # nothing else
        assert float(e[..., 2:].max()) <= 3.0 * doubly                     # 2+ channels off for charge 2


def test_ion_evidence_equals_the_sum_over_all_peaks() -> None:
    """Reading only the nearest peaks gives the full Gaussian-window sum, also with crowded peaks."""
    V = DEFAULT_VOCABULARY
    masses = V.mass_tensor(dtype=torch.float64, device="cpu")
    gen = torch.Generator().manual_seed(0)
    prefix = torch.cumsum(masses[torch.randint(2, len(V), (3, 6), generator=gen)], 1).to(torch.float64)
    precursor = prefix[:, -1] + 300.0
    ions = prefix[:, 2:3] + masses[V.index("G")] + PROTON_MASS            # a b ion to crowd peaks around
    mz = torch.cat([torch.rand(3, 20, generator=gen, dtype=torch.float64) * 1500 + 50,
                    ions + torch.linspace(-0.04, 0.04, 3, dtype=torch.float64)], 1)   # 3 peaks within 4 sigma
    intensity = torch.rand(3, 23, generator=gen)
    intensity[0, -5:] = 0.0                                                # padding anywhere
    e = ion_evidence(prefix, masses, precursor, torch.tensor([2, 3, 3]), mz, intensity, sigma=0.01)
    new = prefix[..., None] + masses
    b1, y1 = new + PROTON_MASS, precursor[:, None, None] - new + PROTON_MASS
    all_ions = torch.stack([b1, y1, (b1 + PROTON_MASS) / 2, (y1 + PROTON_MASS) / 2], -1)
    diff = (all_ions[..., None] - mz[:, None, None, None, :]).to(torch.float32)
    dense = (torch.exp(-0.5 * (diff / 0.01) ** 2) * intensity[:, None, None, None, :]).sum(-1)
    dense[0, ..., 2:] = 0.0                                                # 2+ channels off for charge 2
    torch.testing.assert_close(e, torch.log1p(dense / 0.05), atol=1e-5, rtol=1e-5)
