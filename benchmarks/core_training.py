"""Overhead of equipoise.core diagnostics in mini-batch training: step time with the default
diagnostics over ``diagnostics=False``.

Model: an MLP (``--layers`` hidden layers of ``--width`` units, GELU, LayerNorm: about 0.8M
parameters in 26 tensors with the defaults, one parameter group as a transformer would be) trained
by AdamW with warm-up/cosine learning rate and gradient clipping on mini-batches of 64 drawn by
``Batches``, with three terms through the shared forward (squared error, Huber, a logit penalty).
"on" is the default (log_every=1, grad_every=10: per-term gradients, norms and cosines every 10th
step; record.jsonl written), "off" is ``diagnostics=False``; "on_sparse" is the default with
``grad_every=--sparse-grad-every``. Both run in this process,
interleaved, and the ratio of the median step times is printed.

Usage: python benchmarks/core_training.py [--repeats 7] [--steps 30] [--width 256] [--layers 6] [--device cpu]
       [--sparse-grad-every 50]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

from equipoise.core import Batches, Fit, Stage, Term, robust, schedules
from fit_timing import median_step_seconds


def build(diagnostics: bool, run_dir: str, steps: int, width: int, layers: int, device: str,
          grad_every: int = 10) -> tuple[Fit, int, int]:
    torch.manual_seed(0)
    blocks: list[nn.Module] = [nn.Linear(32, width)]
    for _ in range(layers):
        blocks += [nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()]
    model = nn.Sequential(*blocks, nn.Linear(width, 8)).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 32, generator=gen)
    y = torch.tanh(x[:, :8] * x[:, 8:16])
    data = Batches(list(zip(x, y)), batch_size=64, seed=2)

    def forward(batch):
        inputs, target = (t.to(device) for t in batch)
        prediction = model(inputs)
        return prediction, prediction - target

    terms = [Term("mse", lambda out: (out[1] ** 2).mean()),
             Term("huber", lambda out: robust.huber(out[1], 0.1).mean(), weight=0.5),
             Term("logits", lambda out: (out[0] ** 2).mean(), weight=0.01)]
    stage = Stage("train", ["model"], optimizer="adamw", lr=1e-3, steps=steps, clip_grad_norm=1.0,
                  lr_schedule=schedules.WarmupCosine(warmup=5, total=steps))
    params = list(model.parameters())
    fit = Fit({"model": params}, terms, [stage], forward=forward, data=data, run_dir=run_dir, progress="quiet",
              checkpoint_every=10 ** 9, diagnostics=diagnostics, grad_every=grad_every)
    return fit, sum(p.numel() for p in params), len(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sparse-grad-every", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fits = {}
        for name, grad_every in (("off", 10), ("on", 10), ("on_sparse", args.sparse_grad_every)):
            fits[name], n_params, n_tensors = build(name != "off", f"{tmp}/{name}", args.steps, args.width,
                                                    args.layers, args.device, grad_every)
        seconds = median_step_seconds(fits, args.steps, args.repeats, args.device)
    on, off = seconds["on"], seconds["off"]
    print(f"parameters: {n_params:,} in {n_tensors} tensors; terms: 3; batch 64; steps per run: {args.steps}; "
          f"repeats: {args.repeats}; device: {args.device}; threads: {args.threads}")
    print(f"median step time: diagnostics off {off * 1e3:.2f} ms, default diagnostics {on * 1e3:.2f} ms")
    print(f"ratio on/off: {on / off:.3f} (goal <= 1.10); per-term gradients every {args.sparse_grad_every} steps "
          f"instead of 10: {seconds['on_sparse'] / off:.3f}")
    print("expected from the per-term backward passes alone (3 terms): about 1 + 2/3 * 2/grad_every")


if __name__ == "__main__":
    main()
