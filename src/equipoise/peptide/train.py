"""Training the de novo model on labelled spectra, as one ``equipoise.core`` fit.

One parameter group (``model``); the terms of :mod:`equipoise.peptide.terms` (``ce``,
``spectrum``, ``precursor``) with curriculum schedules (``schedules.Piecewise`` tables) and a
:class:`~equipoise.core.TargetShareBalancer` rebalanced every ``rebalance_every`` steps, so each
term's share, weight and gradient norms are in ``record.jsonl`` and core's dominance and
dead-gradient flags watch them. Core does the rest (docs/core.md, "Training"): seeded resumable
mini-batches (``core.data.Batches``), AdamW with a warm-up + cosine learning rate
(``schedules.WarmupCosine``), gradient clipping, a wall-time budget, validation every
``validate_every`` steps (CE, and peptide recall / AA precision / AA recall of beam-search
predictions with peptide-A's metrics) in the record and summary, checkpoints and resume, and data
parallelism under ``torchrun`` (rank 0 writes). The best model by validation peptide recall is
kept beside the last one.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from equipoise.core import Fit, Stage, TargetShareBalancer, distributed, schedules
from equipoise.core.data import Batches
from equipoise.errors import InputError
from equipoise.peptide.decoding import DecodingConfig, beam_search
from equipoise.peptide.io import read_spectra
from equipoise.peptide.metrics import evaluate_predictions
from equipoise.peptide.model import (ModelConfig, PeptideTransformer, PreparedSpectrum, SpectrumBatch, collate,
                                     prepare, save_model)
from equipoise.peptide.terms import TrainingOutput, cross_entropy, make_terms
from equipoise.peptide.vocab import DEFAULT_VOCABULARY, Vocabulary

#: validation metrics where larger is better (the others, val_ce, smaller)
VALIDATION_MAXIMIZE = ("peptide_recall", "aa_precision", "aa_recall", "precursor_fraction")

__all__ = ["TrainConfig", "load_recipe", "load_labelled", "targets_with_stop", "build_fit", "train", "TrainResult",
           "DEFAULT_RECIPE"]

DEFAULT_RECIPE = Path(__file__).with_name("recipes") / "default.toml"


@dataclass
class TrainConfig:
    """A training recipe (TOML keys of the same names; ``[model]`` a :class:`ModelConfig`).

    ``terms``: base weights; ``shares``: target shares of the balancer (None, in TOML
    ``shares = false``: fixed weights);
    ``curriculum``: per term a ``[[step, multiplier], ...]`` table (``schedules.Piecewise``);
    ``steps``: optimiser steps; ``lr``: peak learning rate of AdamW (``weight_decay``), linear
    warm-up over ``warmup_steps`` then a cosine down to ``lr_floor * lr`` at ``steps``, or at
    ``max_seconds`` when the clock ends the run first (``WarmupCosine(by_time=True)``);
    ``clip_grad_norm``: gradient clipping (None: off); ``max_seconds``: wall budget of the run
    (it ends after the step that spends it); ``checkpoint_every``: steps between checkpoints;
    ``validate_every``: steps between validations; ``val_spectra``/``val_beams``: validation set
    size and beam width.
    """

    seed: int = 1
    batch_size: int = 32
    steps: int = 20000
    lr: float = 5e-4
    warmup_steps: int = 500
    lr_floor: float = 0.05
    weight_decay: float = 0.01
    clip_grad_norm: float | None = 1.0
    label_smoothing: float = 0.01
    precursor_scale_ppm: float = 100.0
    terms: dict[str, float] = field(default_factory=lambda: {"ce": 1.0, "spectrum": 1.0, "precursor": 1.0})
    shares: dict[str, float] | None = field(default_factory=lambda: {"ce": 0.8, "spectrum": 0.1, "precursor": 0.1})
    rebalance_every: int = 100
    curriculum: dict[str, list[list[float]]] = field(default_factory=lambda: {
        "spectrum": [[0, 0.0], [1000, 1.0]], "precursor": [[0, 0.0], [1000, 1.0]]})
    max_seconds: float | None = None
    checkpoint_every: int = 100
    validate_every: int = 500
    val_spectra: int = 256
    val_beams: int = 1
    grad_every: int = 25
    model: ModelConfig = field(default_factory=ModelConfig)

    def check(self, where: str = "recipe") -> None:
        """InputError naming the key for impossible settings."""
        for name in ("batch_size", "steps", "warmup_steps", "checkpoint_every", "validate_every",
                     "val_spectra", "val_beams", "rebalance_every", "grad_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
                raise InputError(f"must be a positive integer, got {value!r}", path=where, field=name)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"must be > 0, got {self.lr!r}", path=where, field="lr")
        if self.shares is not None and set(self.shares) != set(self.terms):
            raise InputError(f"shares {sorted(self.shares)} must name exactly the terms {sorted(self.terms)}",
                             path=where, field="shares")
        unknown = set(self.curriculum) - set(self.terms)
        if unknown:
            raise InputError(f"curriculum for terms not in [terms]: {sorted(unknown)}", path=where, field="curriculum")


def load_recipe(path: str | Path | None = None) -> TrainConfig:
    """Read a TOML recipe (default: the shipped ``recipes/default.toml``). Missing keys take the
    defaults of :class:`TrainConfig`; an unknown key is an InputError naming file and key."""
    path = Path(path) if path is not None else DEFAULT_RECIPE
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read the recipe: {exc.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", path=path) from None
    known = {f.name for f in fields(TrainConfig)}
    for key in data:
        if key not in known:
            raise InputError(f"unknown recipe key {key!r}; known: {sorted(known)}", path=path, field=key)
    for key in ("shares", "clip_grad_norm", "max_seconds"):
        if data.get(key) is False:          # TOML has no null: "key = false" means None (off)
            data[key] = None
    model = ModelConfig.from_dict(data.pop("model", {}), where=f"{path}: model")
    config = TrainConfig(**data, model=model)
    config.check(str(path))
    return config


def load_labelled(path: str | Path, vocab: Vocabulary, model_config: ModelConfig) -> list[PreparedSpectrum]:
    """Read and preprocess a labelled MGF/mzML file; every spectrum must carry ``SEQ=`` and fit the
    model's ``max_length`` (InputError naming the file and spectrum otherwise)."""
    spectra = read_spectra(path, vocabulary=vocab).spectra
    prepared = []
    for s in spectra:
        if s.tokens is None:
            raise InputError(f"spectrum {s.index} ({s.title!r}) has no SEQ= annotation; training needs labels",
                             path=path, field="SEQ")
        if len(s.tokens) > model_config.max_length:
            raise InputError(f"spectrum {s.index}: peptide of {len(s.tokens)} tokens exceeds max_length "
                             f"{model_config.max_length}", path=path, field="SEQ")
        prepared.append(prepare(s, vocab, model_config))
    return prepared


def targets_with_stop(tokens: torch.Tensor, vocab: Vocabulary) -> torch.Tensor:
    """(B, T) residue tokens padded with 0 -> (B, T + 1) with the stop token after each peptide."""
    targets = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], 1)], dim=1)
    lengths = (tokens != vocab.pad_index).sum(dim=1)
    targets[torch.arange(tokens.shape[0], device=tokens.device), lengths] = vocab.stop_index
    return targets


def training_output(model: PeptideTransformer, batch: SpectrumBatch) -> TrainingOutput:
    """Teacher-forced forward pass of one batch, in the form the terms read."""
    batch = batch.to(model.device)
    return TrainingOutput(model(batch), targets_with_stop(batch.tokens, model.vocab), batch.mz, batch.intensity,
                          batch.peak_padding, batch.precursor_mass)


@torch.no_grad()
def validate(model: PeptideTransformer, items: list[PreparedSpectrum], batch_size: int, beams: int,
             precursor_tol_ppm: float = 20.0) -> dict[str, float]:
    """Validation CE (teacher forced) and Casanovo's metrics of beam-search predictions."""
    was_training = model.training
    model.eval()
    vocab = model.vocab
    ce_sum, n_tokens, predictions, ok, scores = 0.0, 0, [], [], []
    for start in range(0, len(items), batch_size):
        batch = collate(items[start:start + batch_size])
        out = training_output(model, batch)
        count = int((out.targets != vocab.pad_index).sum())
        ce_sum += float(cross_entropy(out.logits, out.targets, vocab.pad_index, 0.0)) * count
        n_tokens += count
        for p in beam_search(model, batch, DecodingConfig(beams=beams, precursor_tol_ppm=precursor_tol_ppm)):
            predictions.append(None if p is None else p.tokens)
            ok.append(p is not None and p.within_tolerance)
            scores.append(-math.inf if p is None else p.score)
    truths = [vocab.decode(s.token_ids) for s in items]
    metrics = evaluate_predictions(truths, predictions, scores, ok, vocabulary=vocab, by_length=False)
    model.train(was_training)
    return {"val_ce": ce_sum / max(n_tokens, 1), "peptide_recall": metrics.peptide_recall,
            "aa_precision": metrics.aa_precision, "aa_recall": metrics.aa_recall,
            "precursor_fraction": metrics.precursor_fraction}


def build_fit(model: PeptideTransformer, batches: Batches, config: TrainConfig, run_dir: Path | None,
              progress: str = "auto", validate: Callable[[], dict[str, float]] | None = None,
              record_config: dict | None = None) -> Fit:
    """The core ``Fit`` of a training run: one group ``model``, the recipe's terms, curriculum
    schedules and balancer, one AdamW stage with warm-up + cosine learning rate, clipping and the
    time budget; each step's batch comes from ``batches`` (core ``Batches``)."""
    terms = make_terms(model.vocab, config.terms,
                       {t: schedules.Piecewise(tuple((int(s), float(m)) for s, m in table))
                        for t, table in config.curriculum.items()},
                       label_smoothing=config.label_smoothing, precursor_scale_ppm=config.precursor_scale_ppm)
    stage = Stage("train", free=["model"], optimizer="adamw", lr=config.lr, steps=config.steps,
                  optimizer_options={"weight_decay": config.weight_decay, "fused": True},
                  lr_schedule=schedules.WarmupCosine(warmup=config.warmup_steps, total=config.steps,
                                                     floor=config.lr_floor,
                                                     by_time=config.max_seconds is not None),
                  clip_grad_norm=config.clip_grad_norm, max_seconds=config.max_seconds,
                  balancer=TargetShareBalancer(config.shares) if config.shares else None,
                  rebalance_every=config.rebalance_every if config.shares else None)
    return Fit({"model": list(model.parameters())}, terms, [stage], forward=lambda batch: training_output(model, batch),
               data=batches, validate=validate, validate_every=config.validate_every if validate else None,
               validate_maximize=list(VALIDATION_MAXIMIZE), run_dir=run_dir, grad_every=config.grad_every,
               progress=progress, checkpoint_every=config.checkpoint_every, config=record_config)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: steps done, how the stage ended ("steps" or "time"), the last
    validation metrics and the best value of each (with its step), model paths."""

    steps: int
    ended: str
    elapsed_s: float
    validation: dict
    model_path: Path
    best_model_path: Path
    run_dir: Path

    def summary(self) -> str:
        last = self.validation.get("last") or {}
        best = self.validation.get("best") or {}
        lines = [f"{self.steps} steps in {self.elapsed_s:.0f} s (ended by {self.ended})",
                 f"last validation (step {last.get('step', '-')}): {_fmt(last.get('metrics', {}))}",
                 "best: " + (", ".join(f"{k} {v['value']:.4g} (step {v['step']})" for k, v in best.items()) or "-"),
                 f"model: {self.model_path}", f"best model (peptide recall): {self.best_model_path}"]
        return "\n".join(lines)


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()) or "-"


def train(train_path: str | Path, val_path: str | Path, out: str | Path, config: TrainConfig | None = None,
          vocab: Vocabulary = DEFAULT_VOCABULARY, progress: str = "auto", resume: bool = True) -> TrainResult:
    """Train a :class:`PeptideTransformer` on labelled spectra; resumes from ``out`` when it holds
    a checkpoint (and ``resume``). ``out`` is the core run directory (config.json, record.jsonl,
    summary.json, run.log, checkpoint.pt) and gets ``model.pt`` (last) and ``best.pt`` (best
    validation peptide recall). Under ``torchrun`` call :func:`equipoise.core.distributed.setup`
    first: every rank trains on its shard, rank 0 writes."""
    config = config or TrainConfig()
    config.check()
    out = Path(out)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    train_items = load_labelled(train_path, vocab, config.model)
    val_items = load_labelled(val_path, vocab, config.model)[: config.val_spectra]
    if len(train_items) < config.batch_size * distributed.world_size():
        raise InputError(f"{len(train_items)} training spectra, fewer than one batch of {config.batch_size}",
                         path=train_path, field="batch_size")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory: {exc.strerror}", path=out) from None
    model = PeptideTransformer(vocab, config.model)
    model.train()
    batches = Batches(train_items, config.batch_size, seed=config.seed, collate=collate, drop_last=True)
    model_path, best_path, best_file = out / "model.pt", out / "best.pt", out / "best.json"

    def validation() -> dict[str, float]:
        values = validate(model, val_items, config.batch_size, config.val_beams)
        if distributed.is_main():
            save_model(model, model_path, {"validation": values})
            best = json.loads(best_file.read_text()) if best_file.is_file() else None
            if best is None or (values["peptide_recall"], -values["val_ce"]) > (best["peptide_recall"], -best["val_ce"]):
                save_model(model, best_path, {"validation": values})
                best_file.write_text(json.dumps(values))
        return values

    fit = build_fit(model, batches, config, out, progress, validation,
                    {"recipe": asdict(config), "train": str(train_path), "val": str(val_path)})
    result = fit.run(resume=resume)
    if distributed.is_main():
        save_model(model, model_path, {"steps": result.steps, "validation": result.validation})
    return TrainResult(result.steps, result.stages[-1].ended if result.stages else "steps",
                       time.perf_counter() - started, result.validation or {}, model_path, best_path, out)
