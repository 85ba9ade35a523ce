"""Training the ensemble VAE on one or several ensembles' models, as one :class:`equipoise.core.Fit`.

A seeded split keeps ``holdout`` of each ensemble's models out of training (written to
``DIR/holdout.pdb``, or ``DIR/holdout_<name>.pdb`` per protein, and ``DIR/split.json``); the rest
make training pairs: encode one conformer (the target), decode it from another (the template),
each turned by an independent uniform random rotation, the template with optional Gaussian
coordinate noise. With several proteins one model learns them all: each step's batch holds
pairs of one protein (:class:`equipoise.core.Interleaved`). Everything else (mini-batches,
balancing, records, checkpoints, resume, time budget, data parallelism under ``torchrun``) is
the core's.

Run directory: ``DIR/model.pt`` (what sampling needs: weights, configs, and per protein the
sequence, template conformers and calibrated temperature), ``DIR/fit/`` (the core's config.json,
record.jsonl, summary.json, run.log, checkpoint.pt), the held-out models, ``DIR/split.json``,
``DIR/train.json`` (the result).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from equipoise.core import Fit, Stage, distributed, schedules
from equipoise.core.data import Batches, Interleaved
from equipoise.ensemble.frames import local_coordinates, random_rotations
from equipoise.ensemble.io import Ensemble, write_ensemble
from equipoise.ensemble.metrics import kabsch_rmsd, pairwise_rmsd, rmsd_to
from equipoise.ensemble.model import EnsembleVAE, VAEConfig, VAEOutput, encode_sequence
from equipoise.ensemble.objective import (ObjectiveConfig, collapse_diagnostic, collapse_flags, make_balancer,
                                          make_terms)
from equipoise.errors import InputError

__all__ = ["TrainConfig", "TrainResult", "PairDataset", "PairCollate", "split_models", "train", "load_model",
           "build_model", "medoid", "training_fit_metrics", "prior_spread", "calibrate_temperature", "MODEL_FILE",
           "residue_mask", "ProteinData", "prepare_proteins", "protein_entry"]

MODEL_FILE = "model.pt"
DTYPE = torch.float32
TEMPLATES = ("medoid", "pairs")


@dataclass
class TrainConfig:
    """Training settings. ``holdout``: fraction of models kept out (0 <= f < 1); ``minutes``: wall
    time budget; ``steps``: step budget (whichever ends first); ``noise``: std (Å) of the Gaussian
    noise on template coordinates; ``lr``: AdamW learning rate (linear warm-up over ``warmup``
    steps, cosine decay to 0.1 lr at ``steps``); ``clip_grad_norm``: gradient clipping (None: off); ``template``: "medoid" (decode
    every target from the training medoid) or "pairs" (from every other training model)."""

    holdout: float = 0.2
    minutes: float = 20.0
    seed: int = 1
    steps: int = 200_000
    batch_size: int = 8
    lr: float = 2e-3
    noise: float = 0.1
    template: str = "medoid"
    warmup: int = 50
    clip_grad_norm: float | None = 10.0
    validate_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    model: VAEConfig = field(default_factory=VAEConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def check(self) -> None:
        """InputError for impossible settings, before any computation."""
        if not 0.0 <= self.holdout < 1.0:
            raise InputError(f"holdout must lie in [0, 1), got {self.holdout}", field="--holdout")
        if not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise InputError(f"minutes must be a positive number, got {self.minutes}", field="--minutes")
        if self.steps < 1 or self.batch_size < 1:
            raise InputError(f"steps and batch size must be >= 1, got {self.steps}, {self.batch_size}",
                             field="steps")
        if self.template not in TEMPLATES:
            raise InputError(f"template must be one of {TEMPLATES}, got {self.template!r}", field="template")
        if self.noise < 0:
            raise InputError(f"template noise must be >= 0 Å, got {self.noise}", field="noise")


@dataclass
class TrainResult:
    """Outcome of :func:`train`: where the model is, how long it trained, the last term values
    (raw), the collapse diagnostic of the last logged batch, and the validation history
    (last and best of :func:`training_fit_metrics`); ``temperature``: the prior temperature that
    matches the training spread (:func:`calibrate_temperature`; ``calibration``: ratio per
    temperature), which sampling multiplies with the user's (of the first protein; ``proteins``:
    name, size, split and temperature of each)."""

    out_dir: Path
    steps: int
    seconds: float
    n_train: int
    n_holdout: int
    completed: bool
    final_terms: dict[str, float]
    collapse: dict
    flags: list[dict]
    validation: dict = field(default_factory=dict)
    temperature: float = 1.0
    calibration: dict = field(default_factory=dict)
    proteins: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """A few readable lines."""
        terms = ", ".join(f"{k} {v:.4g}" for k, v in self.final_terms.items())
        return (f"trained {self.steps} steps in {self.seconds:.0f} s on {self.n_train} models "
                f"({self.n_holdout} held out) -> {self.out_dir / MODEL_FILE}\n"
                f"final terms: {terms}\n"
                f"latent: {self.collapse.get('active_units', 0):.0f}/{self.collapse.get('latent_dims', 0):.0f} "
                f"active units, global KL {self.collapse.get('kl_global_nats', float('nan')):.3g} nats; "
                f"{len(self.flags)} kinds of flags\n"
                f"validation (training models only): {self.validation.get('last', {}).get('metrics', {})}; "
                f"calibrated prior temperature " + ", ".join(
                    f"{p['name'] + ' ' if p['name'] else ''}{p['temperature']:g}" for p in self.proteins))


def split_models(n_models: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of model indices into (train, holdout); the holdout has round(holdout * n)
    models (at least 1 when holdout > 0) and training keeps at least 2."""
    n_out = max(1, round(holdout * n_models)) if holdout > 0 else 0
    if n_models - n_out < 2:
        raise InputError(f"{n_models} models with holdout {holdout} leave fewer than 2 for training",
                         field="--holdout")
    perm = torch.randperm(n_models, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_out:]), sorted(perm[:n_out])


def residue_mask(ensemble: Ensemble) -> Tensor:
    """Residues (n,) bool whose four backbone atoms are present in every model."""
    mask = torch.as_tensor(ensemble.mask, dtype=torch.bool)
    present = mask.all(dim=-1).all(dim=0) if mask.dim() == 3 else mask.all(dim=0)
    if int(present.sum()) < 3:
        raise InputError(f"only {int(present.sum())} residues have N, CA, C, O in every model; 3 are needed",
                         field="mask")
    return present


class PairDataset(Sequence):
    """Ordered (template, target) pairs of distinct training models, templates from ``templates``
    (default: every model): item k -> (template index, target index)."""

    def __init__(self, n_models: int, templates: Sequence[int] | None = None) -> None:
        self.n = n_models
        self.templates = list(range(n_models)) if templates is None else list(templates)

    def __len__(self) -> int:
        return len(self.templates) * (self.n - 1)

    def __getitem__(self, k: int) -> tuple[int, int]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        t, r = divmod(k, self.n - 1)
        i = self.templates[t]
        return i, r + (r >= i)


def medoid(coords: Tensor, mask: Tensor) -> int:
    """Index of the model (coords (M, n, 4, 3)) with the smallest mean squared RMSD to all others
    (residues in ``mask``)."""
    x = coords[:, mask].reshape(coords.shape[0], -1, 3)
    return int(rmsd_to(x, x).square().mean(1).argmin())


class PairCollate:
    """Batch of pairs -> (template, target) coordinates (B, n, 4, 3), each centred and randomly
    rotated, template noise (global torch RNG: the core's checkpoints hold it, so a resumed run
    draws the same rotations), and ``protein``, the index of the protein in the model."""

    def __init__(self, coords: Tensor, mask: Tensor, noise: float, protein: int = 0) -> None:
        self.coords, self.mask, self.noise, self.protein = coords, mask, noise, protein

    def _turned(self, x: Tensor) -> Tensor:
        centre = x[:, self.mask, 1].mean(1)[:, None, None]
        rot = random_rotations(x.shape[0], dtype=x.dtype, device=x.device)
        return torch.einsum("bij,bnaj->bnai", rot, x - centre)

    def __call__(self, items: Sequence[tuple[int, int]]) -> dict:
        i = torch.tensor([a for a, _ in items])
        j = torch.tensor([b for _, b in items])
        template = self._turned(self.coords[i])
        if self.noise > 0:
            template = template + self.noise * torch.randn_like(template)
        mask = self.mask.expand(len(items), -1)
        return {"template": template, "target": self._turned(self.coords[j]), "mask": mask, "protein": self.protein}


@dataclass
class ProteinData:
    """One protein of a training run: its ensemble, a unique ``name``, the seeded split (model
    indices into the ensemble), the residue mask (n,), the training coordinates (M, n, 4, 3) in
    the training dtype, the training pairs and the template models (indices into the ensemble)."""

    name: str
    ensemble: Ensemble
    train_idx: list[int]
    holdout_idx: list[int]
    mask: Tensor
    coords: Tensor
    pairs: PairDataset
    template_idx: list[int]

    @property
    def templates(self) -> Tensor:
        """Template conformers (T, n, 4, 3) in the training dtype."""
        return self.coords[self.pairs.templates]

    @property
    def holdout_file(self) -> str:
        return "holdout.pdb" if self.name == "" else f"holdout_{self.name}.pdb"


def _protein_names(ensembles: Sequence[Ensemble]) -> list[str]:
    """"" for a single protein (files keep their one-protein names), else unique names from the
    source files' stems and chains."""
    if len(ensembles) == 1:
        return [""]
    names: list[str] = []
    for e in ensembles:
        stem = Path(str(e.source)).name.split(".")[0] or "protein"
        base = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{stem}_{e.chain_id}")
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def prepare_proteins(ensembles: Sequence[Ensemble], config: TrainConfig) -> list[ProteinData]:
    """Split, mask, pairs and templates of each protein (every split seeded by ``config.seed``)."""
    proteins = []
    for name, ensemble in zip(_protein_names(ensembles), ensembles):
        where = f" ({ensemble.source})" if len(ensembles) > 1 else ""
        if ensemble.n_models < 2:
            raise InputError(f"an ensemble needs at least 2 models, got {ensemble.n_models}{where}", field="ensemble")
        coords = torch.as_tensor(ensemble.coords, dtype=torch.float64)
        train_idx, holdout_idx = split_models(coords.shape[0], config.holdout, config.seed)
        mask = residue_mask(ensemble)
        templates = [medoid(coords[train_idx], mask)] if config.template == "medoid" else None
        pairs = PairDataset(len(train_idx), templates)
        proteins.append(ProteinData(name, ensemble, train_idx, holdout_idx, mask, coords[train_idx].to(DTYPE), pairs,
                                    [train_idx[i] for i in pairs.templates]))
    return proteins


def build_model(proteins: Sequence[ProteinData], config: VAEConfig) -> EnsembleVAE:
    """A fresh VAE for the proteins' sequences; N, C, O start at each protein's training models'
    mean local coordinates."""
    ideal = [local_coordinates(p.coords.to(torch.float64)).mean(0) for p in proteins]
    return EnsembleVAE([encode_sequence(p.ensemble.sequence) for p in proteins], ideal, config).to(DTYPE)


def _save_model(path: Path, model: EnsembleVAE, proteins: Sequence[ProteinData], config: TrainConfig,
                calibrations: Sequence[tuple[float, dict]] | None = None) -> None:
    entries = []
    for k, p in enumerate(proteins):
        temperature, calibration = calibrations[k] if calibrations else (1.0, {})
        e = p.ensemble
        entries.append({"name": p.name, "sequence": e.sequence, "residue_names": e.residue_names,
                        "residue_numbers": e.residue_numbers, "chain_id": e.chain_id, "source": e.source,
                        "templates": torch.as_tensor(e.coords, dtype=torch.float64)[p.template_idx],
                        "residue_mask": p.mask, "template_indices": p.template_idx,
                        "temperature": temperature, "calibration": calibration})
    payload = {"state_dict": model.state_dict(), "vae_config": config.model.to_dict(),
               "objective": config.objective.to_dict(), "proteins": entries}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_model(run_dir: str | Path) -> tuple[EnsembleVAE, dict]:
    """The trained VAE of a run directory and its saved payload: ``proteins``, one entry per
    protein (name, sequence, residue names and numbers, chain, templates, residue mask, calibrated
    temperature; :func:`protein_entry` picks one), the configs and the weights."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise InputError(f"no trained model in {run_dir} (expected {MODEL_FILE}; run `equipoise ensemble train`)",
                         path=path)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if "proteins" not in payload:
        raise InputError("not a model file of this version of equipoise (no 'proteins'): train again", path=path)
    config = VAEConfig(**payload["vae_config"])
    state = payload["state_dict"]
    entries = payload["proteins"]
    model = EnsembleVAE([encode_sequence(e["sequence"]) for e in entries],
                        [state[f"ideal_local_{k}"] for k in range(len(entries))], config)
    model.load_state_dict(state)
    return model.to(DTYPE).eval(), payload


def protein_entry(payload: dict, protein: int | str | None = None) -> tuple[int, dict]:
    """(index, entry) of one protein of a loaded model's payload: by index or name; None for a
    model of one protein (an InputError listing the names otherwise)."""
    entries = payload["proteins"]
    names = [e["name"] or f"#{k}" for k, e in enumerate(entries)]
    if protein is None:
        if len(entries) == 1:
            return 0, entries[0]
        raise InputError(f"the model was trained on {len(entries)} proteins: choose one with --protein "
                         f"({', '.join(names)})", field="--protein")
    if isinstance(protein, str) and not protein.isdigit():
        if protein not in names:
            raise InputError(f"no protein {protein!r} in the model; it has {', '.join(names)}", field="--protein")
        return names.index(protein), entries[names.index(protein)]
    index = int(protein)
    if not 0 <= index < len(entries):
        raise InputError(f"protein index {index} out of range: the model has {len(entries)}", field="--protein")
    return index, entries[index]


def train(ensembles: Ensemble | Sequence[Ensemble], out_dir: str | Path, config: TrainConfig | None = None,
          progress: str = "auto", max_steps: int | None = None, diagnostics: bool = True) -> TrainResult:
    """Train the VAE on one ensemble or several (one model for all proteins; each step's batch
    comes from one protein, drawn in proportion to its training pairs), each on a seeded
    ``1 - holdout`` share of its models, resuming from ``out_dir`` if it holds a checkpoint of
    the same run. ``max_steps``: stop after this many steps in this call (with a checkpoint; run
    again to continue); ``diagnostics=False`` turns off the core's per-term records and gradient
    norms (benchmarks/ensemble.py measures their cost). Under ``torchrun`` call
    :func:`equipoise.core.distributed.setup` first: every rank trains on its share of each
    step's pairs, rank 0 writes. Returns a :class:`TrainResult`."""
    config = config or TrainConfig()
    config.check()
    ensembles = [ensembles] if isinstance(ensembles, Ensemble) else list(ensembles)
    if not ensembles:
        raise InputError("no ensemble to train on", field="ENSEMBLE")
    out = Path(out_dir)
    main = distributed.is_main()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory: {exc}", path=out) from exc
    proteins = prepare_proteins(ensembles, config)
    world = distributed.world_size()
    for p in proteins:
        if len(p.pairs) < world:
            raise InputError(f"{len(p.pairs)} training pairs{' of ' + p.name if p.name else ''}, fewer than the "
                             f"{world} processes", field="--nproc_per_node")
    if main:
        split = {"seed": config.seed, "holdout": config.holdout,
                 "proteins": [{"name": p.name, "source": str(p.ensemble.source), "train": p.train_idx,
                               "holdout_models": p.holdout_idx, "holdout_file": p.holdout_file if p.holdout_idx else None}
                              for p in proteins]}
        (out / "split.json").write_text(json.dumps(split, indent=1))
        for p in proteins:
            if p.holdout_idx:
                write_ensemble(p.ensemble.select(p.holdout_idx), out / p.holdout_file)
    torch.manual_seed(config.seed)
    model = build_model(proteins, config.model)
    sources = [Batches(p.pairs, batch_size=max(1, min(config.batch_size, len(p.pairs) // world)), shuffle=True,
                       seed=config.seed + k, collate=PairCollate(p.coords, p.mask, config.noise, k))
               for k, p in enumerate(proteins)]
    batches = Interleaved(sources, seed=config.seed)
    last: dict[str, VAEOutput] = {}

    def forward(batch: dict) -> VAEOutput:
        model.train()
        last["out"] = model(batch["template"], batch["target"], batch["mask"], protein=batch["protein"])
        return last["out"]

    def summarize() -> dict:
        return collapse_diagnostic(last["out"]) if "out" in last else {}

    def monitor(step: int) -> list:
        return collapse_flags(summarize(), step, after=config.objective.kl_period)

    def validate() -> dict[str, float]:
        metrics = _validation_metrics(model, proteins)
        if main:
            _save_model(out / MODEL_FILE, model, proteins, config)
        return metrics

    objective = config.objective
    n_train, n_holdout = sum(len(p.train_idx) for p in proteins), sum(len(p.holdout_idx) for p in proteins)
    stage = Stage("train", free=["model"], optimizer="adamw", lr=config.lr, steps=config.steps,
                  lr_schedule=schedules.WarmupCosine(warmup=min(config.warmup, config.steps - 1), total=config.steps,
                                                     floor=0.1, by_time=True),
                  clip_grad_norm=config.clip_grad_norm, max_seconds=60.0 * config.minutes,
                  balancer=make_balancer(objective), rebalance_every=objective.rebalance_every)
    fit = Fit({"model": list(model.parameters())}, make_terms(objective, [p.ensemble.sequence for p in proteins]),
              [stage], forward=forward, data=batches, validate=validate, validate_every=config.validate_every,
              run_dir=out / "fit", log_every=config.log_every, grad_every=10 * config.log_every,
              summarize=summarize, progress=progress, checkpoint_every=config.checkpoint_every,
              diagnostics=diagnostics, monitor=monitor,
              config={"train": {k: v for k, v in asdict(config).items() if k not in ("model", "objective")},
                      "model": config.model.to_dict(), "objective": objective.to_dict(),
                      "proteins": [{"name": p.name, "source": str(p.ensemble.source), "n_res": p.ensemble.n_res,
                                    "n_train": len(p.train_idx), "n_holdout": len(p.holdout_idx)} for p in proteins],
                      "n_train": n_train, "n_holdout": n_holdout, "world_size": world})
    started = time.perf_counter()
    result = fit.run(max_steps=max_steps)
    calibrations = [calibrate_temperature(model, p.coords, p.mask, p.templates, protein=k)
                    for k, p in enumerate(proteins)]
    seconds = time.perf_counter() - started
    summary_of = [{"name": p.name, "n_res": p.ensemble.n_res, "n_train": len(p.train_idx),
                   "n_holdout": len(p.holdout_idx), "temperature": t, "calibration": c}
                  for p, (t, c) in zip(proteins, calibrations)]
    terms, logged = _last_logged(out / "fit" / "record.jsonl") if main else ({}, {})
    train_result = TrainResult(out, result.steps, seconds, n_train, n_holdout, result.completed,
                               terms, summarize() or logged, result.flags,
                               result.validation, calibrations[0][0], calibrations[0][1], summary_of)
    if main:
        _save_model(out / MODEL_FILE, model, proteins, config, calibrations)
        summary = asdict(train_result)
        summary["out_dir"] = str(out)
        (out / "train.json").write_text(json.dumps(summary, indent=1, default=str))
    return train_result


def _validation_metrics(model: EnsembleVAE, proteins: Sequence[ProteinData]) -> dict[str, float]:
    """:func:`training_fit_metrics` of each protein; with several, their means plus each protein's
    under ``name/metric``."""
    per = [training_fit_metrics(model, p.coords, p.mask, p.templates, protein=k) for k, p in enumerate(proteins)]
    if len(per) == 1:
        return per[0]
    metrics = {key: sum(m[key] for m in per) / len(per) for key in per[0]}
    for p, m in zip(proteins, per):
        metrics.update({f"{p.name}/{key}": value for key, value in m.items()})
    return metrics


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1, 3).to(torch.float64)


def prior_spread(model: EnsembleVAE, coords: Tensor, mask: Tensor, templates: Tensor, temperature: float = 1.0,
                 n: int = 32, seed: int = 0, protein: int = 0, n_reference: int | None = None) -> float:
    """Mean pairwise RMSD of ``n`` prior samples at ``temperature`` over that of ``n_reference``
    (None: ``n``; as many as there are or more: all) training models of protein ``protein``
    (``coords``), drawn with ``seed`` (not the first ones: the frames of a trajectory are ordered,
    and its first frames spread less than the whole): 1 = the training spread, near 0 =
    collapsed. The same ``seed`` draws the same templates and latent noise at every temperature,
    so the ratio is a smooth function of ``temperature``."""
    was_training = model.training
    model.eval()
    order = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(seed))
    reference = coords[order[: n if n_reference is None else n_reference]]
    m = mask.expand(n, -1)
    atoms = mask.repeat_interleave(4)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        template = templates[torch.randint(templates.shape[0], (n,), generator=gen)]
        z, z_res = model.prior(n, temperature, gen, coords.dtype, protein)
        prior = model.decode(template, m, z, z_res, protein)
    model.train(was_training)
    return float(pairwise_rmsd(_flat(prior), atoms).mean() / pairwise_rmsd(_flat(reference), atoms).mean())


def calibrate_temperature(model: EnsembleVAE, coords: Tensor, mask: Tensor, templates: Tensor,
                          grid: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0),
                          protein: int = 0, n: int = 96) -> tuple[float, dict]:
    """The prior temperature whose samples spread like the training models: :func:`prior_spread`
    (``n`` prior samples against all training models) on ``grid``, then linear interpolation
    between the two neighbouring grid temperatures whose ratios bracket 1 (the spread grows about
    linearly with the temperature; a grid step alone is a 20-30 % spread error), checked by one
    more evaluation. Without a bracket, the grid end closest to 1. Uses training models only.
    Returns the temperature and the ratio at each temperature tried (keys ``f"{t:g}"``)."""
    def ratio(t: float) -> float:
        return prior_spread(model, coords, mask, templates, t, n=n, protein=protein, n_reference=coords.shape[0])

    ratios = {t: ratio(t) for t in grid}
    best = min(ratios, key=lambda t: abs(ratios[t] - 1.0))
    for lo, hi in zip(grid, grid[1:]):
        if (ratios[lo] - 1.0) * (ratios[hi] - 1.0) < 0:
            t = lo + (1.0 - ratios[lo]) * (hi - lo) / (ratios[hi] - ratios[lo])
            ratios[t] = ratio(t)
            best = min((lo, hi, t), key=lambda u: abs(ratios[u] - 1.0))
            break
    return best, {f"{t:g}": r for t, r in sorted(ratios.items())}


def training_fit_metrics(model: EnsembleVAE, coords: Tensor, mask: Tensor, templates: Tensor,
                         n: int = 16, protein: int = 0) -> dict[str, float]:
    """Validation numbers from training models only (the held-out models are never seen):
    ``recon_rmsd_A``, the mean RMSD of posterior-mean reconstructions of the first ``n`` training
    models, and ``prior_spread_ratio`` (:func:`prior_spread` at temperature 1)."""
    was_training = model.training
    model.eval()
    x = coords[:n]
    m = mask.expand(x.shape[0], -1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        template = templates[torch.randint(templates.shape[0], (x.shape[0],), generator=gen)]
        recon = model(template, x, m, sample=False, protein=protein).pred
    model.train(was_training)
    recon_rmsd = kabsch_rmsd(_flat(recon), _flat(x), mask.repeat_interleave(4)).mean()
    return {"recon_rmsd_A": float(recon_rmsd),
            "prior_spread_ratio": prior_spread(model, coords, mask, templates, n=n, protein=protein)}


def _last_logged(record: Path) -> tuple[dict[str, float], dict]:
    """Raw term values and the summary (collapse diagnostic) of the last logged steps of a core
    record: what a resumed run that had no step left to take reports."""
    terms: dict[str, float] = {}
    params: dict = {}
    if record.is_file():
        for line in record.read_text().splitlines():
            entry = json.loads(line)
            if "terms" in entry:
                terms = {t: v["raw"] for t, v in entry["terms"].items()}
            if "params" in entry:
                params = entry["params"]
    return terms, params
