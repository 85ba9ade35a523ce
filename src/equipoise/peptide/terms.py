"""Loss terms of peptide training: ``ce``, ``spectrum`` and ``precursor``, as plain functions of
the teacher-forced logits, and the :class:`~equipoise.core.Term` objects built from them.

The two physics terms look at the *expected* residue mass of every position under the model's
distribution, ``m_i = sum_v softmax(logits_i)_v mass_v`` (Da; masses from the one vocabulary), so
they are differentiable in the logits. This fixes three failures of the seed project
(../shared/DESIGN.md): the precursor term is log-scaled, never clamped (its gradient at 25,000 ppm
is ``s/(s + 25000)``, not 0); the spectrum term looks both ways (predicted fragments must sit on
observed peaks *and* observed intensity must sit on predicted fragments, so a wrong sequence that
happens to hit a few peaks still scores badly); and every mass comes from the model's vocabulary.

Shapes: B spectra, T target tokens (residues, stop excluded), V tokens, P peaks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from equipoise.core import Term, robust
from equipoise.core.schedules import Schedule
from equipoise.errors import InputError
from equipoise.peptide import fragments as ions
from equipoise.peptide.vocab import H2O_MASS, Vocabulary

__all__ = ["TrainingOutput", "cross_entropy", "expected_masses", "precursor_error_ppm", "precursor_loss",
           "predicted_fragments", "unexplained_predicted", "unexplained_observed", "spectrum_loss", "make_terms",
           "DEFAULT_KERNEL"]

#: Gaussian match kernel of the spectrum term: (sigma Da, weight) pairs. The narrow one is a
#: fragment tolerance; the wide one keeps a gradient while expected masses are still tens of
#: mDa to a Da off (early training).
DEFAULT_KERNEL: tuple[tuple[float, float], ...] = ((0.02, 0.8), (0.5, 0.2))


@dataclass
class TrainingOutput:
    """What the training forward pass hands every term.

    ``logits`` (B, T + 1, V); ``targets`` (B, T + 1) token indices with the stop token after the
    last residue and padding (0) after it; ``mz``/``intensity``/``peak_padding`` (B, P) observed
    peaks (Th, relative intensity, True = no peak); ``precursor_mass`` (B,) neutral mass, Da.
    """

    logits: Tensor
    targets: Tensor
    mz: Tensor
    intensity: Tensor
    peak_padding: Tensor
    precursor_mass: Tensor


def cross_entropy(logits: Tensor, targets: Tensor, pad_index: int, label_smoothing: float = 0.01) -> Tensor:
    """Mean token cross-entropy (nats) over non-padding targets, with label smoothing."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=pad_index,
                           label_smoothing=label_smoothing)


def expected_masses(logits: Tensor, token_masses: Tensor, valid: Tensor) -> Tensor:
    """Expected mass (Da) of each output position, (B, T + 1), zero where ``valid`` is False.

    ``token_masses`` (V,) from :meth:`Vocabulary.mass_tensor` (padding and stop weigh 0), so
    probability put on the stop token before the end lowers the expected mass."""
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    return (probs @ token_masses.to(probs)) * valid


def precursor_error_ppm(masses: Tensor, precursor_mass: Tensor) -> Tensor:
    """(B,) signed error (ppm) of the expected neutral mass ``sum(masses) + H2O`` against the
    observed ``precursor_mass`` (Da)."""
    calculated = masses.sum(dim=1) + H2O_MASS
    observed = precursor_mass.to(calculated)
    return (calculated - observed) / observed * 1e6


def precursor_loss(masses: Tensor, precursor_mass: Tensor, scale_ppm: float = 100.0) -> Tensor:
    """Mean ``log_scaled(|error ppm|, scale_ppm)``: linear below ``scale_ppm``, logarithmic above,
    never saturating (:func:`equipoise.core.robust.log_scaled`)."""
    return robust.log_scaled(precursor_error_ppm(masses, precursor_mass).abs(), scale_ppm).mean()


def predicted_fragments(masses: Tensor, targets: Tensor, vocab: Vocabulary) -> tuple[Tensor, Tensor]:
    """Singly charged b and y ion m/z of the expected sequence, from the one ladder
    (:func:`equipoise.peptide.fragments.fragment_mz`).

    ``masses`` (B, T + 1) expected masses; ``targets`` (B, T + 1) give which positions are residues
    (not stop, not padding). Returns ``mz`` (B, 2T) and ``mask`` (B, 2T), True on real cleavages.
    """
    residues = (targets != vocab.pad_index) & (targets != vocab.stop_index)
    mz, valid = ions.fragment_mz(masses, residues, ion_types=("b", "y"), charges=(1,))
    return mz.flatten(1), valid.flatten(1)


def _kernel(predicted: Tensor, observed: Tensor, kernel: Sequence[tuple[float, float]]) -> Tensor:
    """(B, F, P) float32 Gaussian match strength between predicted and observed m/z (Th). The
    differences are taken in the inputs' dtype (float64: 1e-3 Da at m/z 2000 needs it), the
    exponentials in float32 (the kernel values need no more)."""
    d2 = ((predicted[:, :, None] - observed.to(predicted)[:, None, :]) ** 2).to(torch.float32)
    return sum(w * torch.exp(-d2 / (2 * s * s)) for s, w in kernel)


def _miss_predicted(strength: Tensor, frag_mask: Tensor, peak_padding: Tensor) -> Tensor:
    """(B,) from the (B, F, P) kernel: mean over real fragments of exp(-matched strength)."""
    miss = torch.exp(-(strength * (~peak_padding)[:, None, :]).sum(-1)) * frag_mask
    return miss.sum(1) / frag_mask.sum(1).clamp(min=1)


def _miss_observed(strength: Tensor, frag_mask: Tensor, intensity: Tensor, peak_padding: Tensor) -> Tensor:
    """(B,) from the (B, F, P) kernel: intensity fraction of real peaks no fragment explains."""
    weight = intensity.to(strength) * (~peak_padding)
    unexplained = torch.exp(-(strength * frag_mask[:, :, None]).sum(1))
    return (weight * unexplained).sum(1) / weight.sum(1).clamp(min=1e-12)


def unexplained_predicted(frag_mz: Tensor, frag_mask: Tensor, mz: Tensor, peak_padding: Tensor,
                          kernel: Sequence[tuple[float, float]] = DEFAULT_KERNEL) -> Tensor:
    """(B,) mean over predicted fragments of ``exp(-sum_j K(f, o_j))``: 0 when every predicted
    fragment sits on an observed peak, 1 when none does."""
    return _miss_predicted(_kernel(frag_mz, mz, kernel), frag_mask, peak_padding)


def unexplained_observed(frag_mz: Tensor, frag_mask: Tensor, mz: Tensor, intensity: Tensor, peak_padding: Tensor,
                         kernel: Sequence[tuple[float, float]] = DEFAULT_KERNEL) -> Tensor:
    """(B,) intensity-weighted fraction of observed peaks that no predicted fragment explains:
    ``sum_j I_j exp(-sum_f K(f, o_j)) / sum_j I_j``. Noise peaks keep it above 0 even for the true
    sequence; a wrong sequence leaves more intensity unexplained."""
    return _miss_observed(_kernel(frag_mz, mz, kernel), frag_mask, intensity, peak_padding)


def spectrum_loss(frag: Tensor, mask: Tensor, mz: Tensor, intensity: Tensor, peak_padding: Tensor,
                  kernel: Sequence[tuple[float, float]] = DEFAULT_KERNEL) -> Tensor:
    """Mean over spectra of the average of both directions (0 best, 1 worst); ``frag``/``mask``
    from :func:`predicted_fragments`. The (B, F, P) kernel is computed once for both."""
    strength = _kernel(frag, mz, kernel)
    both = _miss_predicted(strength, mask, peak_padding) + _miss_observed(strength, mask, intensity, peak_padding)
    return 0.5 * both.mean()


class _Masses:
    """Expected masses and fragments of one training output, computed once for both physics terms."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab, self._key, self._value = vocab, None, None

    def __call__(self, out: TrainingOutput) -> tuple[Tensor, Tensor, Tensor]:
        if self._key is not out:
            valid = out.targets != self.vocab.pad_index
            masses = self.vocab.mass_tensor(dtype=torch.float64, device=out.logits.device)
            expected = expected_masses(out.logits, masses, valid)
            self._key, self._value = out, (expected, *predicted_fragments(expected, out.targets, self.vocab))
        return self._value


def make_terms(vocab: Vocabulary, weights: dict[str, float], schedules: dict[str, Schedule | None] | None = None,
               label_smoothing: float = 0.01, precursor_scale_ppm: float = 100.0,
               kernel: Sequence[tuple[float, float]] = DEFAULT_KERNEL) -> list[Term]:
    """The terms named in ``weights`` (any of ``ce``, ``spectrum``, ``precursor``) with their base
    weights and optional schedules, all reading masses from ``vocab``."""
    schedules = schedules or {}
    shared = _Masses(vocab)
    functions = {
        "ce": lambda out: cross_entropy(out.logits, out.targets, vocab.pad_index, label_smoothing),
        "spectrum": lambda out: spectrum_loss(*shared(out)[1:], out.mz, out.intensity, out.peak_padding, kernel),
        "precursor": lambda out: precursor_loss(shared(out)[0], out.precursor_mass, precursor_scale_ppm),
    }
    unknown = set(weights) - set(functions)
    if unknown:
        raise InputError(f"unknown terms {sorted(unknown)}; known: {sorted(functions)}", field="terms")
    return [Term(name, functions[name], weight=float(w), schedule=schedules.get(name)) for name, w in weights.items()]
