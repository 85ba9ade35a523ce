"""A tiny regression network trained on mini-batches: shared by the training and DDP tests."""

from __future__ import annotations

import torch
from torch import nn

from equipoise.core import Batches, Fit, Stage, Term, schedules

DTYPE = torch.float64


class Points(torch.utils.data.Dataset):
    """``n`` points ``x`` (4 features) with targets ``sin(x) @ w`` (one output)."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=gen, dtype=DTYPE)
        self.y = torch.sin(self.x) @ torch.linspace(-1.0, 1.0, 4, dtype=DTYPE)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def make_training(run_dir, batch_size=8, steps=12, dropout=0.1, rank=None, world_size=None, clip=0.5,
                  validate_every=4, kill_at=None, **fit_options):
    """(fit, model, batches): AdamW, warm-up/cosine lr, clipping, validation; dropout draws from the
    global RNG so resume must restore it. ``kill_at``: raise KeyboardInterrupt in forward at that call."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1)).to(DTYPE)
    data = Points()
    batches = Batches(data, batch_size=batch_size, shuffle=True, seed=5, rank=rank, world_size=world_size)
    calls = {"n": 0}

    def forward(batch):
        calls["n"] += 1
        if kill_at is not None and calls["n"] == kill_at:
            raise KeyboardInterrupt
        x, y = batch
        return model(x).squeeze(-1) - y

    def validate():
        model.eval()
        error = float(((model(data.x).squeeze(-1) - data.y) ** 2).mean())
        model.train()
        return {"val_mse": error, "neg": -error}

    terms = [Term("mse", lambda r: (r ** 2).mean()),
             Term("l1", lambda r: r.abs().mean(), weight=0.1, schedule=schedules.Linear(0.0, 1.0, steps=6))]
    stage = Stage("train", free=["model"], optimizer="adamw", lr=0.05, steps=steps,
                  lr_schedule=schedules.WarmupCosine(warmup=3, total=steps, floor=0.1), clip_grad_norm=clip,
                  optimizer_options={"weight_decay": 0.01})
    options = dict(forward=forward, data=batches, validate=validate, validate_every=validate_every,
                   validate_maximize=["neg"], run_dir=run_dir, progress="quiet", checkpoint_every=5, grad_every=3)
    options.update(fit_options)
    fit = Fit({"model": list(model.parameters())}, terms, [stage], **options)
    return fit, model, batches
