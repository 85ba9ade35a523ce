"""Loss terms: non-saturating precursor gradient, bidirectional spectrum term, one vocabulary."""

import torch

from equipoise.peptide import terms
from equipoise.peptide.model import ModelConfig, PeptideTransformer, collate, prepare
from equipoise.peptide.synth import synthesize
from equipoise.core.data import Batches
from equipoise.peptide.model import collate
from equipoise.peptide.train import targets_with_stop, training_output
from equipoise.peptide.vocab import DEFAULT_VOCABULARY as V

BIG = 30.0  # logit of the chosen token in one-hot-like logits


def _one_hot_logits(token_lists: list[list[int]], length: int) -> torch.Tensor:
    logits = torch.zeros(len(token_lists), length + 1, len(V), dtype=torch.float64)
    for i, ids in enumerate(token_lists):
        for t, tok in enumerate(ids + [V.stop_index]):
            logits[i, t, tok] = BIG
    return logits


def test_precursor_gradient_at_25000_ppm_is_not_zero() -> None:
    masses = torch.tensor([[500.0, 500.0]], dtype=torch.float64, requires_grad=True)
    observed = torch.tensor([1018.0105646837 / (1 + 0.025)], dtype=torch.float64)  # expected is 25,000 ppm heavy
    err = terms.precursor_error_ppm(masses, observed)
    assert 24000 < float(err.detach()) < 26000
    loss = terms.precursor_loss(masses, observed, scale_ppm=100.0)
    (grad,) = torch.autograd.grad(loss, masses)
    assert float(grad.abs().min()) > 0
    # a clamp(max=100) would give exactly zero here: the seed project's failure
    clamped = torch.clamp(terms.precursor_error_ppm(masses, observed).abs(), max=100).mean()
    (zero,) = torch.autograd.grad(clamped, masses)
    assert float(zero.abs().max()) == 0


def test_spectrum_term_scores_wrong_sequence_worse_both_directions() -> None:
    spectrum = synthesize(1, seed=5)[0]
    prepared = prepare(spectrum, V, ModelConfig())
    batch = collate([prepared, prepared])
    right = list(prepared.token_ids)
    wrong = list(reversed(right[:-1])) + right[-1:]                 # same mass, different ladder
    if wrong == right:
        wrong = right[1:2] + right[:1] + right[2:]
    targets = targets_with_stop(torch.tensor([right, wrong]), V)
    logits = _one_hot_logits([right, wrong], len(right))
    masses = terms.expected_masses(logits, V.mass_tensor(dtype=torch.float64, device="cpu"), targets != V.pad_index)
    frag, mask = terms.predicted_fragments(masses, targets, V)
    pred = terms.unexplained_predicted(frag, mask, batch.mz, batch.peak_padding)
    obs = terms.unexplained_observed(frag, mask, batch.mz, batch.intensity, batch.peak_padding)
    assert float(pred[0]) < float(pred[1])       # predicted peaks explained by observed ones
    assert float(obs[0]) < float(obs[1])         # observed intensity explained by predicted peaks
    # the precursor term cannot tell them apart (same residues): the spectrum term must
    err = terms.precursor_error_ppm(masses, batch.precursor_mass)
    assert abs(float(err[0]) - float(err[1])) < 1e-6


def test_terms_are_differentiable_and_share_the_vocabulary() -> None:
    torch.manual_seed(0)
    spectra = synthesize(8, seed=7)
    config = ModelConfig(d_model=32, n_heads=2, dim_feedforward=32, encoder_layers=1, decoder_layers=1)
    items = [prepare(s, V, config) for s in spectra]
    model = PeptideTransformer(V, config)
    batches = Batches(items, 4, seed=1, collate=collate)
    out = training_output(model, next(batches))
    made = terms.make_terms(V, {"ce": 1.0, "spectrum": 1.0, "precursor": 1.0})
    assert [t.name for t in made] == ["ce", "spectrum", "precursor"]
    for term in made:
        value = term.fn(out)
        grads = torch.autograd.grad(value, list(model.parameters()), allow_unused=True, retain_graph=True)
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), term.name
    # one vocabulary object: data tokenizer (synth/io), model and terms
    assert model.vocab is V and spectra[0].tokens is not None
    assert items[0].token_ids == V.encode(spectra[0].tokens)
    assert made[1].fn.__closure__ is not None
    captured = [c.cell_contents for t in made for c in (t.fn.__closure__ or ()) if isinstance(c.cell_contents, type(V))]
    assert captured and all(c is V for c in captured)
