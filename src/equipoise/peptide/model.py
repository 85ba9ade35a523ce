"""The de novo sequencing model: a transformer encoder over peaks and an autoregressive decoder
conditioned on the precursor (Casanovo's design: Yilmaz et al., ICML 2022; Noble-Lab/casanovo
``casanovo/denovo/transformers.py`` on wfondrie/depthcharge's encoders).

- Peaks: each (m/z, intensity) becomes a sinusoidal m/z encoding with wavelengths from
  ``min_wavelength`` (0.001 Da) to 10,000 Da, computed in float64 (float32 cannot resolve a
  0.001 Da phase at m/z 2000), plus a learned intensity embedding; a transformer encoder mixes them.
- Decoder: position 0 is the precursor token (sinusoidal neutral-mass encoding + charge
  embedding); positions 1.. are the residue tokens so far. Each input position also carries the
  encoding of the *remaining* mass (precursor mass minus the prefix mass), a cue Casanovo's
  decoder lacks that lets a small model learn when to stop. Output position ``i`` predicts token
  ``i`` (the stop token after the last residue). N- to C-terminus.

The model takes the :class:`~equipoise.peptide.vocab.Vocabulary` in its constructor and reads
token masses only from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from equipoise.errors import InputError
from equipoise.peptide.io import Preprocessing, Spectrum, preprocess
from equipoise.peptide.vocab import DEFAULT_VOCABULARY, PROTON_MASS, Vocabulary

__all__ = ["ModelConfig", "PeptideTransformer", "SinusoidalEncoder", "DecoderLayer", "ion_evidence", "EVIDENCE_IONS", "Memory", "SpectrumBatch", "PreparedSpectrum",
           "prepare", "collate", "save_model", "load_model"]

MODEL_FORMAT = "equipoise.peptide.model/1"


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of :class:`PeptideTransformer` (defaults: the CPU-trainable shipped model).

    ``max_length``: most tokens a peptide may have (residues + N-terminal tag, stop excluded);
    ``max_charge``: highest precursor charge embedded (higher charges share the last embedding);
    ``max_peaks``: most intense peaks kept per spectrum (Casanovo keeps 150; 64 for CPU speed);
    ``prefix_mass``: add a learned linear projection of the prefix-mass encoding to every decoder
    input; ``ion_evidence``: the decoder reads the observed intensity at each candidate token's
    b/y ions (:func:`ion_evidence`, window ``evidence_sigma`` Da). Both False: the models trained
    before these options, which lack their weights.
    """

    d_model: int = 128
    n_heads: int = 4
    dim_feedforward: int = 256
    encoder_layers: int = 2
    decoder_layers: int = 2
    dropout: float = 0.0
    max_length: int = 30
    max_charge: int = 6
    max_peaks: int = 64
    min_wavelength: float = 0.001
    max_wavelength: float = 10000.0
    prefix_mass: bool = False
    ion_evidence: bool = False
    evidence_sigma: float = 0.01

    @classmethod
    def from_dict(cls, values: dict, where: str = "model") -> "ModelConfig":
        """A config from a mapping; an unknown key is an InputError naming it."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise InputError(f"unknown model setting {key!r}; known: {sorted(known)}", field=f"{where}.{key}")
        config = cls(**values)
        if config.d_model % config.n_heads:
            raise InputError(f"d_model {config.d_model} must be divisible by n_heads {config.n_heads}",
                             field=f"{where}.n_heads")
        return config


@dataclass
class PreparedSpectrum:
    """A preprocessed spectrum ready for batching: ``mz``/``intensity`` (n,) float64 (Th;
    square-rooted, unit norm), ``neutral_mass`` (Da), ``charge``, ``token_ids`` (target indices,
    stop excluded; None when unlabelled), ``index`` (position in its file)."""

    mz: np.ndarray
    intensity: np.ndarray
    neutral_mass: float
    charge: int
    token_ids: list[int] | None
    index: int


def prepare(spectrum: Spectrum, vocab: Vocabulary, config: ModelConfig) -> PreparedSpectrum:
    """Casanovo's preprocessing (:func:`equipoise.peptide.io.preprocess`) with the model's
    ``max_peaks``; labelled spectra get their token indices from ``vocab``."""
    mz, intensity = preprocess(spectrum, replace(Preprocessing(), n_peaks=config.max_peaks))
    ids = None if spectrum.tokens is None else vocab.encode(spectrum.tokens)
    return PreparedSpectrum(mz, intensity, spectrum.neutral_mass, spectrum.charge, ids, spectrum.index)


@dataclass
class SpectrumBatch:
    """Padded tensors of B spectra. ``mz`` (B, P) float64 Th; ``intensity`` (B, P) float32;
    ``peak_padding`` (B, P) bool (True = no peak); ``precursor_mass`` (B,) float64 neutral mass Da;
    ``charge`` (B,) int64; ``tokens`` (B, T) int64 targets padded with 0 (stop excluded) or None;
    ``index`` (B,) positions in the input file."""

    mz: Tensor
    intensity: Tensor
    peak_padding: Tensor
    precursor_mass: Tensor
    charge: Tensor
    tokens: Tensor | None
    index: list[int]

    def to(self, device: torch.device | str) -> "SpectrumBatch":
        return SpectrumBatch(self.mz.to(device), self.intensity.to(device), self.peak_padding.to(device),
                             self.precursor_mass.to(device), self.charge.to(device),
                             None if self.tokens is None else self.tokens.to(device), self.index)

    def __len__(self) -> int:
        return int(self.mz.shape[0])


def collate(items: Sequence[PreparedSpectrum]) -> SpectrumBatch:
    """Pad prepared spectra into one :class:`SpectrumBatch` (CPU tensors)."""
    n, peaks = len(items), max(len(s.mz) for s in items)
    mz = torch.zeros(n, peaks, dtype=torch.float64)
    intensity = torch.zeros(n, peaks, dtype=torch.float32)
    padding = torch.ones(n, peaks, dtype=torch.bool)
    for i, s in enumerate(items):
        mz[i, : len(s.mz)] = torch.from_numpy(np.asarray(s.mz, dtype=np.float64))
        intensity[i, : len(s.mz)] = torch.from_numpy(np.asarray(s.intensity, dtype=np.float32))
        padding[i, : len(s.mz)] = False
    tokens = None
    if all(s.token_ids is not None for s in items):
        length = max(len(s.token_ids) for s in items)
        tokens = torch.zeros(n, length, dtype=torch.long)
        for i, s in enumerate(items):
            tokens[i, : len(s.token_ids)] = torch.tensor(s.token_ids, dtype=torch.long)
    return SpectrumBatch(mz, intensity, padding, torch.tensor([s.neutral_mass for s in items], dtype=torch.float64),
                         torch.tensor([s.charge for s in items], dtype=torch.long), tokens, [s.index for s in items])


#: ion types of :func:`ion_evidence`, in the order of its last axis
EVIDENCE_IONS = ("b 1+", "y 1+", "b 2+", "y 2+")
#: peaks on each side of an ion that :func:`ion_evidence` reads
EVIDENCE_NEIGHBOURS = 4


@torch.no_grad()
def ion_evidence(prefix: Tensor, token_masses: Tensor, precursor_mass: Tensor, charge: Tensor, mz: Tensor,
                 intensity: Tensor, sigma: float) -> Tensor:
    """Observed intensity at the ions each candidate next token would create (DeepNovo's ion
    features, Tran et al. 2017, as one Gaussian-window sum instead of an intensity profile).

    ``prefix`` (R, T) residue-mass sums (Da) of R = G * S decoder rows, G rows per spectrum
    (spectrum-major, e.g. the beams of one spectrum); ``token_masses`` (V,) Da;
    ``precursor_mass`` (R,) neutral mass (Da, water included); ``charge`` (R,); ``mz`` (S, P) Th;
    ``intensity`` (S, P), 0 on padding (any order of peaks). With ``n = prefix + mass_v``, the b
    ion is ``n + H+`` and the complementary y ion ``M - n + H+`` (2+: ``(ion + H+) / 2``, only for
    charge >= 3). Returns (R, T, V, 4) float32 ``log1p(sum_j I_j exp(-d_j^2 / 2 sigma^2) / 0.05)``
    in the order of :data:`EVIDENCE_IONS`.
    """
    spectra = mz.shape[0]
    new = prefix.to(torch.float64)[..., None] + token_masses.to(torch.float64)                   # (R, T, V)
    b1 = new + PROTON_MASS
    y1 = precursor_mass.to(torch.float64)[:, None, None] - new + PROTON_MASS
    ions = torch.stack([b1, y1, (b1 + PROTON_MASS) / 2, (y1 + PROTON_MASS) / 2], dim=-1)       # (R, T, V, 4)
    # only the EVIDENCE_NEIGHBOURS nearest peaks on each side of an ion can contribute: the window
    # underflows to 0 in float32 beyond ~14 sigma, so the sum equals the sum over all peaks
    # unless more than that many peaks crowd within 14 sigma on one side (tested against it).
    # Padding peaks sort last at +inf; k more +inf peaks of weight 0 on each side keep every
    # neighbour index in range, and their window exp(-inf) is 0.
    k = EVIDENCE_NEIGHBOURS
    key, order = torch.sort(torch.where(intensity > 0, mz.to(torch.float64), math.inf), dim=1)  # (S, P)
    edge = key.new_full((spectra, k), math.inf)
    padded_key = torch.cat([edge, key, edge], dim=1)                                              # (S, P + 2k)
    weight = intensity.to(torch.float32).gather(1, order)
    padded_weight = torch.cat([weight.new_zeros(spectra, k), weight, weight.new_zeros(spectra, k)], dim=1)
    flat = ions.reshape(spectra, -1)                                                # (S, G*T*V*4) by spectrum
    at = (torch.searchsorted(key, flat)[..., None] + torch.arange(2 * k, device=flat.device)).view(spectra, -1)
    near = padded_key.gather(1, at).view(*flat.shape, 2 * k)
    # the exponent is clamped at -60 (exp(-60) ~ 1e-26, nothing against the 0.05 scale below):
    # torch's exp is ~10x slower for arguments of large magnitude and subnormal results
    exponent = (flat[..., None] - near).to(torch.float32).div_(sigma).square_().mul_(-0.5).clamp_(min=-60.0)
    window = exponent.exp_()
    evidence = (window * padded_weight.gather(1, at).view(*flat.shape, 2 * k)).sum(-1).view(*ions.shape)
    doubly = (charge >= 3).to(torch.float32)[:, None, None, None]
    scale = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float32, device=prefix.device)
    evidence = evidence * (scale + (1 - scale) * doubly)
    return torch.log1p(evidence / 0.05)


class SinusoidalEncoder(nn.Module):
    """Sines and cosines of a value at geometrically spaced wavelengths (Vaswani et al. 2017;
    depthcharge ``FloatEncoder``): (...,) float in the unit of the wavelengths -> (..., d) float32.

    The phases are computed in float64, then cast, so the shortest wavelengths stay meaningful
    for masses of thousands of Da.
    """

    def __init__(self, d: int, min_wavelength: float, max_wavelength: float) -> None:
        super().__init__()
        half = d // 2
        exponent = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        wavelengths = min_wavelength * (max_wavelength / min_wavelength) ** exponent
        self.register_buffer("angular", 2 * math.pi / wavelengths, persistent=False)  # (d/2,) rad per unit

    def forward(self, x: Tensor) -> Tensor:
        phase = x.to(torch.float64)[..., None] * self.angular
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1).to(torch.float32)


#: per decoder layer, the keys and values of the positions decoded so far, each (B, heads, T, d/heads)
Cache = list[tuple[Tensor, Tensor]]


class DecoderLayer(nn.Module):
    """Post-norm transformer decoder layer (Vaswani et al. 2017) whose self-attention keys and
    values can be cached, and whose cross-attention keys and values of the spectrum are computed
    once per spectrum (:meth:`memory`), so a beam-search step costs one position, not the whole
    prefix and all peaks again."""

    def __init__(self, d: int, heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv, self.self_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.query, self.key_value, self.cross_out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ff_in, self.ff_out = nn.Linear(d, feedforward), nn.Linear(feedforward, d)
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    @staticmethod
    def _merge(x: Tensor) -> Tensor:
        b, h, t, e = x.shape
        return x.transpose(1, 2).reshape(b, t, h * e)

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training)

    def memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoded peaks (B, P, d) -> 2 x (B, h, P, d/h)."""
        key, value = self.key_value(memory).chunk(2, dim=-1)
        return self._heads(key), self._heads(value)

    def _cross(self, x: Tensor, memory: tuple[Tensor, Tensor], memory_mask: Tensor) -> Tensor:
        """Cross-attention of ``x`` (G*B, T, d) on the memory of B spectra: rows ``b*G .. b*G+G-1``
        (e.g. the G beams of spectrum b) read spectrum b, as G*T queries of one attention call."""
        query = self._heads(self.query(x))                                           # (G*B, h, T, e)
        rows, spectra = query.shape[0], memory[0].shape[0]
        group = rows // spectra
        if group == 1:
            return F.scaled_dot_product_attention(query, *memory, attn_mask=memory_mask)
        _, h, t, e = query.shape
        grouped = query.view(spectra, group, h, t, e).transpose(1, 2).reshape(spectra, h, group * t, e)
        out = F.scaled_dot_product_attention(grouped, *memory, attn_mask=memory_mask)
        return out.view(spectra, h, group, t, e).transpose(1, 2).reshape(rows, h, t, e)

    def forward(self, x: Tensor, memory: tuple[Tensor, Tensor], memory_mask: Tensor,
                cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` (B, T_new, d): the new positions; ``memory_mask`` (B, 1, 1, P) True on real peaks;
        ``cache``: keys/values of earlier positions or None. Returns the outputs and the cache
        including the new positions."""
        query, key, value = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            key, value = torch.cat([cache[0], key], dim=2), torch.cat([cache[1], value], dim=2)
        attended = F.scaled_dot_product_attention(query, key, value, is_causal=cache is None and x.shape[1] > 1)
        x = self.norm_self(x + self._drop(self.self_out(self._merge(attended))))
        x = self.norm_cross(x + self._drop(self.cross_out(self._merge(self._cross(x, memory, memory_mask)))))
        x = self.norm_ff(x + self._drop(self.ff_out(self._drop(F.relu(self.ff_in(x))))))
        return x, (key, value)


@dataclass
class Memory:
    """The encoded spectra as the decoder reads them: per layer cross-attention keys/values
    (B, h, P, e), ``mask`` (B, 1, 1, P) True on real peaks, ``precursor_mass`` (G*B,) Da and
    ``charge`` (G*B,) of each decoder row (G rows per spectrum, see :meth:`repeat`); ``mz`` and
    ``intensity`` (B, P) the peaks (Th; 0 on padding), read by the ion evidence."""

    layers: list[tuple[Tensor, Tensor]]
    mask: Tensor
    precursor_mass: Tensor
    charge: Tensor
    mz: Tensor
    intensity: Tensor

    def repeat(self, group: int) -> "Memory":
        """The memory of ``group`` decoder rows per spectrum (spectrum-major, e.g. beams): the
        precursor is repeated, the peaks are not (the decoder groups rows by spectrum)."""
        return Memory(self.layers, self.mask, self.precursor_mass.repeat_interleave(group),
                      self.charge.repeat_interleave(group), self.mz, self.intensity)

    def select(self, index: Tensor) -> "Memory":
        """The memory of the spectra ``index`` ((R,) int64; one decoder row per spectrum)."""
        return Memory([(k[index], v[index]) for k, v in self.layers], self.mask[index],
                      self.precursor_mass[index], self.charge[index], self.mz[index], self.intensity[index])


class PeptideTransformer(nn.Module):
    """Spectrum encoder + precursor-conditioned autoregressive peptide decoder.

    ``vocab``: the one vocabulary (its ``mass_tensor`` gives the prefix masses of the decoder's
    remaining-mass input). Shapes: B spectra, P peaks, T tokens, V = len(vocab).
    """

    def __init__(self, vocab: Vocabulary = DEFAULT_VOCABULARY, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.vocab = vocab
        self.config = config = config or ModelConfig()
        d = config.d_model
        self.mz_encoder = SinusoidalEncoder(d, config.min_wavelength, config.max_wavelength)
        self.intensity_embedding = nn.Linear(1, d)
        self.peak_combiner = nn.Linear(2 * d, d)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, config.n_heads, config.dim_feedforward, config.dropout, batch_first=True),
            config.encoder_layers, enable_nested_tensor=False)
        self.mass_encoder = SinusoidalEncoder(d, config.min_wavelength, config.max_wavelength)
        self.charge_embedding = nn.Embedding(config.max_charge, d)
        self.token_embedding = nn.Embedding(len(vocab), d, padding_idx=vocab.pad_index)
        self.position_encoder = SinusoidalEncoder(d, 1.0, 10000.0)
        self.prefix_projection = nn.Linear(d, d, bias=False) if config.prefix_mass else None
        n_evidence = len(vocab) * len(EVIDENCE_IONS)
        self.evidence_projection = nn.Linear(n_evidence, d) if config.ion_evidence else None
        self.evidence_logit = nn.Parameter(torch.zeros(len(vocab), len(EVIDENCE_IONS))) if config.ion_evidence else None
        self.decoder = nn.ModuleList(DecoderLayer(d, config.n_heads, config.dim_feedforward, config.dropout)
                                     for _ in range(config.decoder_layers))
        self.head = nn.Linear(d, len(vocab))
        self.register_buffer("token_masses", vocab.mass_tensor(dtype=torch.float64, device="cpu"), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def encode(self, mz: Tensor, intensity: Tensor, peak_padding: Tensor, precursor_mass: Tensor,
               charge: Tensor) -> Memory:
        """Peaks -> decoder memory. ``mz`` (B, P) Th, ``intensity`` (B, P) (unit norm),
        ``peak_padding`` (B, P) bool, True where there is no peak; ``precursor_mass`` (B,) neutral
        mass Da; ``charge`` (B,) int."""
        peaks = torch.cat([self.mz_encoder(mz), self.intensity_embedding(intensity.to(torch.float32)[..., None])], -1)
        encoded = self.encoder(self.peak_combiner(peaks), src_key_padding_mask=peak_padding)
        return Memory([layer.memory(encoded) for layer in self.decoder], ~peak_padding[:, None, None, :],
                      precursor_mass.to(torch.float64), charge.long(), mz.to(torch.float64),
                      intensity.to(torch.float32).masked_fill(peak_padding, 0.0))

    def decode(self, memory: Memory, tokens: Tensor, cache: Cache | None = None) -> tuple[Tensor, Cache]:
        """Next-token logits. ``tokens`` (B, T) indices so far (0 = padding); ``cache`` from the
        previous call covering positions ``< c`` (None: c = 0). Returns logits (B, T + 1 - c, V)
        for positions ``c .. T`` (position ``i`` scores token ``i`` given tokens ``< i``) and the
        cache for positions ``0 .. T``."""
        batch, length = tokens.shape
        start = 0 if cache is None else cache[0][0].shape[2]
        masses = self.token_masses[tokens]                                            # (B, T) Da
        prefix = torch.cat([masses.new_zeros(batch, 1), masses.cumsum(1)], dim=1)     # (B, T + 1)
        remaining = memory.precursor_mass[:, None] - prefix[:, start:]
        charge_index = (memory.charge - 1).clamp(0, self.config.max_charge - 1)
        first = self.mass_encoder(memory.precursor_mass) + self.charge_embedding(charge_index)
        inputs = torch.cat([first[:, None, :], self.token_embedding(tokens)], dim=1)[:, start:]
        positions = torch.arange(start, length + 1, device=tokens.device, dtype=torch.float64)
        x = inputs + self.position_encoder(positions)[None] + self.mass_encoder(remaining)
        if self.prefix_projection is not None:
            x = x + self.prefix_projection(self.mass_encoder(prefix[:, start:]))
        evidence = None
        if self.evidence_projection is not None:
            evidence = ion_evidence(prefix[:, start:], self.token_masses, memory.precursor_mass, memory.charge,
                                    memory.mz, memory.intensity, self.config.evidence_sigma)  # (B, T', V, 4)
            x = x + self.evidence_projection(evidence.flatten(2))
        new_cache: Cache = []
        for i, layer in enumerate(self.decoder):
            x, layer_cache = layer(x, memory.layers[i], memory.mask, None if cache is None else cache[i])
            new_cache.append(layer_cache)
        logits = self.head(x)
        if evidence is not None:
            logits = logits + (evidence * self.evidence_logit).sum(-1)
        return logits, new_cache

    def forward(self, batch: "SpectrumBatch") -> Tensor:
        """Teacher-forced logits (B, T + 1, V) for the batch's target tokens (B, T)."""
        memory = self.encode(batch.mz, batch.intensity, batch.peak_padding, batch.precursor_mass, batch.charge)
        return self.decode(memory, batch.tokens)[0]


def save_model(model: PeptideTransformer, path: str | Path, extra: dict | None = None) -> Path:
    """Write weights, config and vocabulary (its residue tokens) to ``path`` (torch file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": MODEL_FORMAT, "config": asdict(model.config), "residues": list(model.vocab.residues),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": extra or {}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_model(path: str | Path, vocab: Vocabulary = DEFAULT_VOCABULARY,
               device: torch.device | str = "cpu") -> PeptideTransformer:
    """Read a model written by :func:`save_model`. Its residue tokens must equal ``vocab``'s
    (InputError otherwise: a model trained on another vocabulary would look masses up at the
    wrong indices)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("model file not found", path=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise InputError(f"cannot read model file: {exc}", path=path) from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise InputError(f"not an equipoise peptide model (expected format {MODEL_FORMAT!r})", path=path,
                         field="format")
    if tuple(payload["residues"]) != vocab.residues:
        raise InputError("the model was trained with another vocabulary", path=path, field="residues")
    model = PeptideTransformer(vocab, ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()
