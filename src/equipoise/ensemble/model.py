"""The ensemble VAE: an invariant encoder and an E(n)-equivariant decoder conditioned on the sequence.

Shapes: ``backbone`` (B, n, 4, 3) Å in N, CA, C, O order; ``mask`` (B, n) bool (residues present).

- **Encoder** (invariant): per-residue features are the residue-type embedding, a sinusoidal
  position code and the N, C, O coordinates in the residue's CA frame (:mod:`frames`; invariant
  under rotation and translation), refined by invariant EGNN layers (``update_coors=False``, so
  only CA-CA distances enter). A masked mean pool gives the global latent ``(B, latent)``; a
  per-residue head gives optional residue latents ``(B, n, residue_latent)``.
- **Decoder** (equivariant): starts from a template conformer's CA atoms, centred; node features
  are the residue-type embedding, the position code, the template's local N, C, O coordinates and
  the latents; EGNN layers over a spatial k-nearest-neighbour graph (pair features: embedded
  sequence separation) move the CAs; N, C, O are placed in the output CA frames with local
  coordinates ``ideal + small MLP(h)``; the template's centroid is added back. Rotating or
  translating the template rotates or translates the output; the latents do not change.

Training pairs encode one conformer (the target) and decode it from another (the template).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from equipoise.ensemble.egnn import EGNN, PairFeatures
from equipoise.ensemble.frames import local_coordinates, place_atoms
from equipoise.errors import InputError

__all__ = ["VAEConfig", "EnsembleVAE", "VAEOutput", "AMINO_ACIDS", "encode_sequence"]

#: residue-type vocabulary: the 20 standard amino acids (one-letter codes); index 20 = unknown
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def encode_sequence(sequence: str, device: torch.device | str = "cpu") -> Tensor:
    """One-letter sequence -> residue-type indices (n,) int64 (unknown letters -> 20)."""
    return torch.tensor([AMINO_ACIDS.find(c) if c in AMINO_ACIDS else 20 for c in sequence.upper()],
                        dtype=torch.long, device=device)


@dataclass
class VAEConfig:
    """Sizes of the VAE. ``latent``: global latent size; ``residue_latent``: per-residue latent
    size (0: none); ``k``: neighbours of the spatial graph; ``max_separation``: sequence
    separations beyond this share one embedding; ``coor_init``: initial coordinate-update scale (Å)."""

    hidden: int = 32
    latent: int = 16
    residue_latent: int = 2
    encoder_depth: int = 2
    decoder_depth: int = 4
    k: int = 10
    edge_dim: int = 16
    max_separation: int = 32
    coor_init: float = 1e-2

    def to_dict(self) -> dict:
        """Plain dict (for checkpoints and config.json)."""
        return asdict(self)


@dataclass
class VAEOutput:
    """One forward pass. ``pred``/``target`` (B, n, 4, 3) Å; ``mask`` (B, n); ``mu``/``logvar``
    (B, latent); ``mu_res``/``logvar_res`` (B, n, residue_latent) or None; ``protein``: which of
    the model's proteins."""

    pred: Tensor
    target: Tensor
    mask: Tensor
    mu: Tensor
    logvar: Tensor
    mu_res: Tensor | None
    logvar_res: Tensor | None
    protein: int = 0


def _position_code(n: int, dim: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Sinusoidal code (n, dim) of the residue index (Vaswani et al. 2017, sec. 3.5)."""
    pos = torch.arange(n, dtype=dtype, device=device).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=dtype, device=device) * (-math.log(1000.0) / dim))
    code = torch.zeros(n, dim, dtype=dtype, device=device)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return code


def _masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    weight = mask.to(x.dtype).unsqueeze(-1)
    return (x * weight).sum(dim) / weight.sum(dim).clamp_min(1.0)


class EnsembleVAE(nn.Module):
    """VAE over the backbone conformations of one sequence.

    ``sequence``: residue-type indices (n,) (:func:`encode_sequence`); ``ideal_local``: mean
    local N, C, O coordinates (n, 3, 3) Å of the training conformers (:func:`frames.local_coordinates`),
    the decoder's starting point for placing N, C, O. For a model of several proteins (one set
    of weights, trained on all of them), lists of both, one entry per protein; methods take
    ``protein`` (index, default 0).
    """

    POSITION_DIM = 16

    def __init__(self, sequence: Tensor | Sequence[Tensor], ideal_local: Tensor | Sequence[Tensor],
                 config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VAEConfig()
        sequences = [sequence] if isinstance(sequence, Tensor) else list(sequence)
        locals_ = [ideal_local] if isinstance(ideal_local, Tensor) else list(ideal_local)
        if not sequences or len(sequences) != len(locals_):
            raise InputError(f"need one ideal_local per sequence, got {len(sequences)} sequences and "
                             f"{len(locals_)} ideal_local", field="ideal_local")
        self.n_proteins = len(sequences)
        for k, (seq, ideal) in enumerate(zip(sequences, locals_)):
            n = int(seq.shape[0])
            if n < 3:
                raise InputError(f"the model needs at least 3 residues, got {n} (protein {k})", field="sequence")
            if tuple(ideal.shape) != (n, 3, 3):
                raise InputError(f"ideal_local of protein {k} must have shape ({n}, 3, 3), got {tuple(ideal.shape)}",
                                 field="ideal_local")
            sep = torch.arange(n).unsqueeze(0) - torch.arange(n).unsqueeze(1)
            self.register_buffer(f"sequence_{k}", seq.clone())
            self.register_buffer(f"ideal_local_{k}", ideal.clone())
            self.register_buffer(f"separation_{k}", sep.clamp(-config.max_separation, config.max_separation)
                                 + config.max_separation)
        h = config.hidden
        self.residue_embedding = nn.Embedding(len(AMINO_ACIDS) + 1, h)
        self.encoder_pair = nn.Embedding(2 * config.max_separation + 1, config.edge_dim)
        self.decoder_pair = nn.Embedding(2 * config.max_separation + 1, config.edge_dim)
        self.encoder_in = nn.Linear(h + self.POSITION_DIM + 9, h)
        self.encoder = EGNN(h, config.encoder_depth, edge_dim=config.edge_dim, k=config.k, update_coors=False)
        self.global_head = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 2 * config.latent))
        self.residue_head = nn.Linear(h, 2 * config.residue_latent) if config.residue_latent else None
        self.decoder_in = nn.Linear(h + self.POSITION_DIM + 9 + config.latent + config.residue_latent, h)
        self.decoder = EGNN(h, config.decoder_depth, edge_dim=config.edge_dim, k=config.k,
                            coor_init=config.coor_init)
        self.local_head = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 9))
        nn.init.normal_(self.local_head[-1].weight, std=1e-3)
        nn.init.zeros_(self.local_head[-1].bias)

    def protein(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Buffers of protein ``index``: residue types (n,), ideal local N, C, O (n, 3, 3) Å and the
        clamped sequence separations (n, n)."""
        if not 0 <= index < self.n_proteins:
            raise InputError(f"protein {index} out of range: the model knows {self.n_proteins}", field="protein")
        return (getattr(self, f"sequence_{index}"), getattr(self, f"ideal_local_{index}"),
                getattr(self, f"separation_{index}"))

    def n_res(self, protein: int = 0) -> int:
        """Residues of protein ``protein``."""
        return int(self.protein(protein)[0].shape[0])

    def _node_inputs(self, backbone: Tensor, protein: int) -> Tensor:
        """Residue type, position code and local N, C, O of ``backbone`` -> (B, n, h + 16 + 9)."""
        b, n = backbone.shape[:2]
        sequence = self.protein(protein)[0]
        if n != sequence.shape[0]:
            raise InputError(f"backbone has {n} residues, protein {protein} has {sequence.shape[0]}", field="backbone")
        emb = self.residue_embedding(sequence).to(backbone.dtype).expand(b, -1, -1)
        pos = _position_code(n, self.POSITION_DIM, backbone.dtype, backbone.device).expand(b, -1, -1)
        local = local_coordinates(backbone).reshape(b, n, 9)
        return torch.cat([emb, pos, local], dim=-1)

    def _pair(self, table: nn.Embedding, dtype: torch.dtype, protein: int) -> PairFeatures:
        """Embedded sequence separations of the graph's edges: neighbour indices (B, n, k) ->
        (B, n, k, edge_dim)."""
        separation = self.protein(protein)[2]

        def edges(idx: Tensor) -> Tensor:
            rows = torch.arange(idx.shape[1], device=idx.device).view(1, -1, 1)
            return table(separation[rows, idx]).to(dtype)
        return edges

    def encode(self, backbone: Tensor, mask: Tensor, protein: int = 0
               ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Posterior parameters of ``backbone`` (B, n, 4, 3) of protein ``protein``: mu, logvar
        (B, latent) and the residue latents' mu, logvar (B, n, residue_latent) or None. Invariant
        under rotation and translation."""
        feats = self.encoder_in(self._node_inputs(backbone, protein))
        feats, _ = self.encoder(feats, backbone[:, :, 1], mask, self._pair(self.encoder_pair, backbone.dtype, protein))
        mu, logvar = self.global_head(_masked_mean(feats, mask, 1)).chunk(2, dim=-1)
        if self.residue_head is None:
            return mu, logvar, None, None
        mu_r, logvar_r = self.residue_head(feats).chunk(2, dim=-1)
        return mu, logvar, mu_r, logvar_r

    def decode(self, template: Tensor, mask: Tensor, z: Tensor, z_res: Tensor | None = None,
               protein: int = 0) -> Tensor:
        """Backbone (B, n, 4, 3) Å of protein ``protein`` decoded from the template (B, n, 4, 3),
        latents z (B, latent) and z_res (B, n, residue_latent). Equivariant in the template's
        coordinates."""
        b, n = template.shape[:2]
        ca = template[:, :, 1]
        centre = _masked_mean(ca, mask, 1).unsqueeze(1)
        parts = [self._node_inputs(template, protein), z.unsqueeze(1).expand(-1, n, -1)]
        if self.config.residue_latent:
            if z_res is None:
                raise InputError("this model has residue latents: decode needs z_res", field="z_res")
            parts.append(z_res)
        feats = self.decoder_in(torch.cat(parts, dim=-1))
        feats, coors = self.decoder(feats, ca - centre, mask, self._pair(self.decoder_pair, template.dtype, protein))
        local = self.protein(protein)[1].to(template.dtype) + self.local_head(feats).reshape(b, n, 3, 3)
        return place_atoms(coors, local) + centre.unsqueeze(2)

    def prior(self, batch: int, temperature: float = 1.0, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float32, protein: int = 0) -> tuple[Tensor, Tensor | None]:
        """Latents drawn from N(0, temperature^2 I): z (batch, latent), z_res (batch, n, residue_latent)
        or None, n the residues of protein ``protein``."""
        device = self.residue_embedding.weight.device
        z = temperature * torch.randn(batch, self.config.latent, generator=generator, dtype=dtype, device=device)
        if not self.config.residue_latent:
            return z, None
        z_res = temperature * torch.randn(batch, self.n_res(protein), self.config.residue_latent, generator=generator,
                                          dtype=dtype, device=device)
        return z, z_res

    def forward(self, template: Tensor, target: Tensor, mask: Tensor, sample: bool = True,
                protein: int = 0) -> VAEOutput:
        """Encode ``target``, decode from ``template`` (both (B, n, 4, 3) Å, protein ``protein``);
        reparameterised latents (Kingma & Welling 2014) when ``sample``, posterior means otherwise."""
        mu, logvar, mu_r, logvar_r = self.encode(target, mask, protein)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        z_res = None
        if mu_r is not None:
            z_res = mu_r + torch.randn_like(mu_r) * (0.5 * logvar_r).exp() if sample else mu_r
        pred = self.decode(template, mask, z, z_res, protein)
        return VAEOutput(pred, target, mask, mu, logvar, mu_r, logvar_r, protein)
