"""Overhead of equipoise.core diagnostics: step time with default logging over diagnostics off.

Model: about 1M parameters (a 1000x1000 weight matrix and a bias) fitted by Adam to a batch of
256 samples, with 4 terms: two data terms through the shared forward (squared error and Huber),
a smoothness restraint and an L2 prior on the weights. "on" is the default (log_every=1,
grad_every=10, record.jsonl written); "off" is ``diagnostics=False``. Both run in this process,
interleaved, and the ratio of the median step times is printed. Goal: at most 1.05.

Usage: python benchmarks/core_overhead.py [--repeats 9] [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from equipoise.core import Fit, Stage, Term, robust
from fit_timing import median_step_seconds


def build(diagnostics: bool, run_dir: str, steps: int, device: str) -> Fit:
    gen = torch.Generator().manual_seed(0)
    n_in, n_out, batch = 1000, 1000, 256
    weights = (torch.randn(n_in, n_out, generator=gen) / n_in ** 0.5).to(device).requires_grad_(True)
    bias = torch.zeros(n_out, device=device, requires_grad=True)
    inputs = torch.randn(batch, n_in, generator=gen).to(device)
    target = torch.tanh(inputs @ (torch.randn(n_in, n_out, generator=gen) / n_in ** 0.5)).to(device)

    def forward() -> torch.Tensor:
        return torch.tanh(inputs @ weights + bias)

    terms = [Term("data", lambda pred: ((pred - target) ** 2).mean()),
             Term("robust", lambda pred: robust.huber(pred - target, 0.1).mean(), weight=0.5),
             Term("smooth", lambda pred: ((weights[1:] - weights[:-1]) ** 2).mean(), weight=0.1),
             Term("prior", lambda pred: (weights ** 2).mean(), weight=0.01)]
    return Fit({"weights": weights, "bias": bias}, terms, [Stage("fit", ["weights", "bias"], steps=steps, lr=1e-3)],
               forward=forward, run_dir=run_dir, progress="quiet", checkpoint_every=10 ** 9,
               diagnostics=diagnostics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        fits = {name: build(name == "on", f"{tmp}/{name}", args.steps, args.device) for name in ("off", "on")}
        seconds = median_step_seconds(fits, args.steps, args.repeats, args.device)
    on, off = seconds["on"], seconds["off"]
    print(f"parameters: 1,001,000; terms: 4; steps per run: {args.steps}; repeats: {args.repeats}; device: {args.device}")
    print(f"median step time: diagnostics off {off * 1e3:.2f} ms, default diagnostics {on * 1e3:.2f} ms")
    print(f"ratio on/off: {on / off:.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
