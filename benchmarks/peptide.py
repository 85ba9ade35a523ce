"""Speed and memory of the peptide model: training and ``sequence`` throughput, with references.

- training: spectra/s of real training steps of the default model (the shipped recipe's
  ``build_fit``: core Fit, ce + spectrum + precursor terms, balancer, diagnostics, Adam) on
  synthetic batches; reference: a plain forward pass without gradients on the same batches.
  Bar: >= 200 spectra/s on 2 cores.
- sequence: spectra/s of :func:`equipoise.peptide.decoding.predict` with 5 beams as ``sequence``
  runs it (preprocessing, batching, mass-constrained beam search, rescoring of the beam and
  spectrum-graph candidates, PSMs); references: the best beam without rescoring, and greedy
  decoding (1 beam). Bar: >= 50.
- peak memory: maximum resident set size of this process (bar <= 4 GB).

All timings of one run share the machine's load, so read the ratios; spectra/s are contended
when other jobs run. Usage:
  python benchmarks/peptide.py [--threads 2] [--steps 30] [--spectra 256] [--model PATH]
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import replace

import torch

from equipoise.peptide.decoding import DecodingConfig, predict
from equipoise.peptide.model import PeptideTransformer, collate, load_model, prepare
from equipoise.peptide.rescoring import RescoringConfig
from equipoise.peptide.sequence_cli import DEFAULT_MODEL
from equipoise.peptide.synth import synthesize
from equipoise.core.data import Batches
from equipoise.peptide.train import build_fit, load_recipe
from equipoise.peptide.vocab import DEFAULT_VOCABULARY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="training steps timed")
    parser.add_argument("--spectra", type=int, default=256, help="spectra decoded")
    parser.add_argument("--model", help="model for the sequence timing (default: shipped, else untrained)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = DEFAULT_VOCABULARY
    recipe = load_recipe()
    recipe = replace(recipe, steps=args.steps + 5, warmup_steps=0, max_seconds=None)
    spectra = synthesize(max(args.spectra, recipe.batch_size * (args.steps + 6)), seed=99)
    items = [prepare(s, vocab, recipe.model) for s in spectra]

    model = PeptideTransformer(vocab, recipe.model)
    batches = Batches(items, recipe.batch_size, seed=0, collate=collate)
    fit = build_fit(model, batches, recipe, None, progress="quiet")
    fit.run(max_steps=5)                                              # warm-up steps, not timed
    start = time.perf_counter()
    fit.run(max_steps=args.steps)
    train_rate = args.steps * recipe.batch_size / (time.perf_counter() - start)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(args.steps):
            model(next(batches))
        forward_rate = args.steps * recipe.batch_size / (time.perf_counter() - start)

    path = args.model or (DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None)
    decoder = load_model(path) if path else model.eval()
    subset = spectra[: args.spectra]
    predict(decoder, subset[:64], DecodingConfig(beams=5), rescoring=RescoringConfig())   # warm-up
    rates = {}
    for name, beams, rescoring in (("greedy", 1, None), ("beam", 5, None), ("sequence", 5, RescoringConfig())):
        start = time.perf_counter()
        predict(decoder, subset, DecodingConfig(beams=beams), rescoring=rescoring)
        rates[name] = len(subset) / (time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

    print(f"threads {args.threads}; default model {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          f"parameters; batch {recipe.batch_size}; decoding model: {path or 'untrained'}")
    print(f"training      {train_rate:8.1f} spectra/s   forward-only reference {forward_rate:8.1f} spectra/s   "
          f"ratio {train_rate / forward_rate:.3f}   bar >= 200: {'met' if train_rate >= 200 else 'NOT met'}")
    print(f"sequence 5b   {rates['sequence']:8.1f} spectra/s   best beam, no rescoring {rates['beam']:8.1f} "
          f"spectra/s   "
          f"greedy {rates['greedy']:8.1f} spectra/s   ratio to greedy {rates['sequence'] / rates['greedy']:.3f}   "
          f"bar >= 50: {'met' if rates['sequence'] >= 50 else 'NOT met'}")
    print(f"peak memory   {peak_gb:.2f} GB   bar <= 4: {'met' if peak_gb <= 4 else 'NOT met'}")


if __name__ == "__main__":
    main()
