"""Training the de novo model on labelled spectra, as an ``equipoise.core`` fit.

One parameter group (``model``), the terms of :mod:`equipoise.peptide.terms` (``ce``,
``spectrum``, ``precursor``) with curriculum schedules (``schedules.Piecewise`` tables) and a
:class:`~equipoise.core.TargetShareBalancer` rebalanced every ``rebalance_every`` steps, so each
term's share, weight and gradient norms are in ``fit/record.jsonl`` and core's dominance and
dead-gradient flags watch them. ``forward()`` draws the next mini-batch from :class:`Batches`
(seeded permutations; its position is saved beside every checkpoint, so a resumed run sees the
batches it would have seen).

Learning rate: linear warm-up then cosine decay, applied as piecewise-constant stages (the core
``Fit`` of this branch has no per-step learning-rate schedule yet; each stage starts a fresh Adam).
Validation (CE, peptide recall, AA precision/recall with peptide-A's metrics, beam search with the
precursor constraint) runs every ``validate_every`` steps between fit chunks and goes to
``validation.jsonl`` and ``run.log``; the best model by validation peptide recall is kept.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from equipoise.core import Fit, Stage, TargetShareBalancer, schedules
from equipoise.errors import InputError
from equipoise.peptide.decoding import DecodingConfig, beam_search
from equipoise.peptide.io import read_spectra
from equipoise.peptide.metrics import evaluate_predictions
from equipoise.peptide.model import (ModelConfig, PeptideTransformer, PreparedSpectrum, SpectrumBatch, collate,
                                     prepare, save_model)
from equipoise.peptide.terms import TrainingOutput, cross_entropy, make_terms
from equipoise.peptide.vocab import DEFAULT_VOCABULARY, Vocabulary

__all__ = ["TrainConfig", "load_recipe", "load_labelled", "Batches", "targets_with_stop", "build_fit", "train", "TrainResult",
           "DEFAULT_RECIPE"]

DEFAULT_RECIPE = Path(__file__).with_name("recipes") / "default.toml"


@dataclass
class TrainConfig:
    """A training recipe (TOML keys of the same names; ``[model]`` a :class:`ModelConfig`).

    ``terms``: base weights; ``shares``: target shares of the balancer (None, in TOML
    ``shares = false``: fixed weights);
    ``curriculum``: per term a ``[[step, multiplier], ...]`` table (``schedules.Piecewise``);
    ``steps``: optimiser steps; ``lr``: peak learning rate; ``warmup_steps`` at ``lr/10``, then
    ``decay_stages`` stages following a cosine down to ``lr_floor * lr``; ``max_seconds``: wall
    budget (the run stops at the next chunk boundary after it, resumable); ``chunk``: steps between
    checkpoints and budget checks; ``validate_every``: steps between validations (a multiple of
    ``chunk``); ``val_spectra``/``val_beams``: validation set size and beam width.
    """

    seed: int = 1
    batch_size: int = 32
    steps: int = 20000
    lr: float = 5e-4
    warmup_steps: int = 500
    decay_stages: int = 3
    lr_floor: float = 0.1
    label_smoothing: float = 0.01
    precursor_scale_ppm: float = 100.0
    terms: dict[str, float] = field(default_factory=lambda: {"ce": 1.0, "spectrum": 1.0, "precursor": 1.0})
    shares: dict[str, float] | None = field(default_factory=lambda: {"ce": 0.8, "spectrum": 0.1, "precursor": 0.1})
    rebalance_every: int = 100
    curriculum: dict[str, list[list[float]]] = field(default_factory=lambda: {
        "spectrum": [[0, 0.0], [1000, 1.0]], "precursor": [[0, 0.0], [1000, 1.0]]})
    max_seconds: float | None = None
    chunk: int = 100
    validate_every: int = 500
    val_spectra: int = 256
    val_beams: int = 1
    grad_every: int = 25
    model: ModelConfig = field(default_factory=ModelConfig)

    def check(self, where: str = "recipe") -> None:
        """InputError naming the key for impossible settings."""
        for name in ("batch_size", "steps", "warmup_steps", "decay_stages", "chunk", "validate_every",
                     "val_spectra", "val_beams", "rebalance_every", "grad_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "warmup_steps" else 1):
                raise InputError(f"must be a positive integer, got {value!r}", path=where, field=name)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"must be > 0, got {self.lr!r}", path=where, field="lr")
        if self.validate_every % self.chunk:
            raise InputError(f"must be a multiple of chunk ({self.chunk}), got {self.validate_every}", path=where,
                             field="validate_every")
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
    if data.get("shares") is False:          # TOML has no null: "shares = false" means fixed weights
        data["shares"] = None
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


class Batches:
    """Endless seeded mini-batches over ``items``: a fresh permutation each epoch
    (``seed + epoch``), ``batch_size`` items per batch, the last partial batch of an epoch dropped.
    :meth:`state`/:meth:`load` save and restore the position."""

    def __init__(self, items: list[PreparedSpectrum], batch_size: int, seed: int) -> None:
        if len(items) < batch_size:
            raise InputError(f"{len(items)} training spectra, fewer than one batch of {batch_size}", field="batch_size")
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng(self.seed + self.epoch).permutation(len(self.items))

    def __next__(self) -> SpectrumBatch:
        if self.position + self.batch_size > len(self.items):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        chosen = self._order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return collate([self.items[i] for i in chosen])

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


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


def lr_stages(config: TrainConfig) -> list[tuple[str, int, float]]:
    """(name, steps, lr) of the piecewise-constant learning-rate plan: warm-up at ``lr/10``, then
    ``decay_stages`` stages at the cosine (from ``lr`` to ``lr_floor * lr``) of their midpoints.
    Stage lengths are multiples of ``chunk`` so checkpoints and batch positions stay aligned."""
    def rounded(n: float) -> int:
        return max(config.chunk, int(round(n / config.chunk)) * config.chunk)
    plan = []
    if config.warmup_steps:
        plan.append(("warmup", rounded(config.warmup_steps), config.lr / 10))
    rest = max(config.steps - sum(p[1] for p in plan), config.chunk)
    each = rounded(rest / config.decay_stages)
    for i in range(config.decay_stages):
        mid = (i + 0.5) / config.decay_stages
        factor = config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * mid))
        plan.append((f"lr{i + 1}", each, config.lr * factor))
    return plan


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
              progress: str = "auto", record_config: dict | None = None) -> Fit:
    """The core ``Fit`` of a training run: one group ``model``, the recipe's terms, curriculum
    schedules and balancer, one stage per learning-rate segment; ``forward()`` draws the next
    batch from ``batches``."""
    def forward() -> TrainingOutput:
        return training_output(model, next(batches))

    terms = make_terms(model.vocab, config.terms,
                       {t: schedules.Piecewise(tuple((int(s), float(m)) for s, m in table))
                        for t, table in config.curriculum.items()},
                       label_smoothing=config.label_smoothing, precursor_scale_ppm=config.precursor_scale_ppm)
    stages = [Stage(name, free=["model"], optimizer="adam", lr=lr, steps=steps,
                    balancer=TargetShareBalancer(config.shares) if config.shares else None,
                    rebalance_every=config.rebalance_every if config.shares else None)
              for name, steps, lr in lr_stages(config)]
    return Fit({"model": list(model.parameters())}, terms, stages, forward=forward, run_dir=run_dir,
               grad_every=config.grad_every, progress=progress, checkpoint_every=config.chunk,
               config=record_config)


@dataclass
class TrainResult:
    """Outcome of :func:`train`: steps done, whether the step plan finished (False: stopped by
    the time budget; run again to resume), the last and best validation, model paths."""

    steps: int
    completed: bool
    elapsed_s: float
    validation: list[dict]
    best: dict | None
    model_path: Path
    best_model_path: Path
    run_dir: Path

    def summary(self) -> str:
        last = self.validation[-1] if self.validation else {}
        best = self.best or {}
        state = "finished" if self.completed else "stopped by the time budget (resumable)"
        return (f"{self.steps} steps in {self.elapsed_s:.0f} s, {state}\n"
                f"last validation: {_fmt(last)}\nbest validation: {_fmt(best)}\n"
                f"model: {self.model_path}\nbest model: {self.best_model_path}")


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()) or "-"


def train(train_path: str | Path, val_path: str | Path, out: str | Path, config: TrainConfig | None = None,
          vocab: Vocabulary = DEFAULT_VOCABULARY, progress: str = "auto", resume: bool = True) -> TrainResult:
    """Train a :class:`PeptideTransformer` on labelled spectra; resumes from ``out`` when it holds
    a checkpoint (and ``resume``). Writes ``out/fit/`` (core run directory), ``out/validation.jsonl``,
    ``out/model.pt`` (last), ``out/best.pt`` (best validation peptide recall), ``out/recipe.json``."""
    config = config or TrainConfig()
    config.check()
    out = Path(out)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    train_items = load_labelled(train_path, vocab, config.model)
    val_items = load_labelled(val_path, vocab, config.model)[: config.val_spectra]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output directory: {exc.strerror}", path=out) from None
    model = PeptideTransformer(vocab, config.model)
    model.train()
    batches = Batches(train_items, config.batch_size, config.seed)
    batch_state = out / "batches.json"
    if resume and batch_state.is_file():
        batches.load(json.loads(batch_state.read_text()))
    (out / "recipe.json").write_text(json.dumps(asdict(config), indent=1))

    fit = build_fit(model, batches, config, out / "fit", progress,
                    {"recipe": asdict(config), "train": str(train_path), "val": str(val_path)})
    history_path = out / "validation.jsonl"
    history = [json.loads(line) for line in history_path.read_text().splitlines()] \
        if resume and history_path.is_file() else []
    best = max(history, key=lambda h: (h["peptide_recall"], -h["val_ce"]), default=None)
    model_path, best_path = out / "model.pt", out / "best.pt"
    while True:
        result = fit.run(resume=resume, max_steps=config.chunk)
        resume = True
        batch_state.write_text(json.dumps(batches.state()))
        step = result.steps
        if step % config.validate_every == 0 or result.completed:
            values = {"step": step, **validate(model, val_items, config.batch_size, config.val_beams),
                      "elapsed_s": time.perf_counter() - started}
            history.append(values)
            with history_path.open("a") as handle:
                handle.write(json.dumps(values) + "\n")
            with (out / "fit" / "run.log").open("a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} validation at step {step}: {_fmt(values)}\n")
            if progress != "quiet":
                print(f"[equipoise] validation at step {step}: {_fmt(values)}", flush=True)
            save_model(model, model_path, {"step": step, "validation": values})
            if best is None or (values["peptide_recall"], -values["val_ce"]) > (best["peptide_recall"], -best["val_ce"]):
                best = values
                save_model(model, best_path, {"step": step, "validation": values})
        over_budget = config.max_seconds is not None and time.perf_counter() - started > config.max_seconds
        if result.completed or over_budget:
            break
    if not best_path.is_file():
        save_model(model, best_path, {"step": step})
    if not model_path.is_file():
        save_model(model, model_path, {"step": step})
    return TrainResult(step, result.completed, time.perf_counter() - started, history, best, model_path, best_path, out)
