"""Training speed of ``equipoise ensemble train`` on 2K39 (ubiquitin, 116 NMR models) and the cost
of equipoise.core's diagnostics in it: steps/s of the real training path (``ensemble.train.train``,
default model and objective) with the default diagnostics (log_every=10, per-term gradients every
100 steps) against the same run with ``diagnostics=False``, measured in this process, interleaved.

Each arm trains ``--steps`` and then ``2 * --steps`` steps from scratch; the marginal time per step
``(t(2S) - t(S)) / S`` cancels the fixed costs (model build, temperature calibration, writing the
model). Goal for the overhead ratio: <= 1.10.

Usage: python benchmarks/ensemble.py [--steps 60] [--repeats 3] [--threads 1] [--data PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from equipoise.ensemble.io import read_ensemble
from equipoise.ensemble.train import TrainConfig, train

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ensembles" / "2k39_ubiquitin_116models.pdb.gz"


def timed_train(ensemble, steps: int, diagnostics: bool, tmp: str) -> float:
    """Wall seconds of one fresh ``train`` call of ``steps`` steps."""
    out = tempfile.mkdtemp(dir=tmp)
    start = time.perf_counter()
    train(ensemble, out, TrainConfig(steps=steps, validate_every=10 ** 9, checkpoint_every=10 ** 9),
          progress="quiet", diagnostics=diagnostics)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ensemble = read_ensemble(args.data)
    per_step: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        timed_train(ensemble, 2, True, tmp)  # warm-up: imports, allocator
        for _ in range(args.repeats):
            for name in ("off", "on"):
                short = timed_train(ensemble, args.steps, name == "on", tmp)
                long = timed_train(ensemble, 2 * args.steps, name == "on", tmp)
                per_step[name].append((long - short) / args.steps)
    on, off = (statistics.median(per_step[k]) for k in ("on", "off"))
    print(f"2K39: {len(ensemble.sequence)} residues; steps per arm {args.steps} and {2 * args.steps}; "
          f"repeats {args.repeats}; threads {args.threads}")
    print(f"steps/s: diagnostics off {1 / off:.2f}, default diagnostics {1 / on:.2f}")
    print(f"ratio of step times on/off: {on / off:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
