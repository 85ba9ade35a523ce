"""Choose the rescoring weights on synthetic spectra and report the result (docs/peptide.md).

1. Candidates and features (``equipoise.peptide.rescoring.rescore_batch``, 5 beams, 20 ppm) of
   ``--n`` synthetic spectra of seed 5 (tuning) and of seed 7 (held out), realistic noise model.
2. Coordinate search of the weights (logp fixed at 1) for peptide recall + AA precision on seed 5,
   from ``--start`` (default: the shipped ``RescoringConfig`` weights).
3. Metrics with the model alone (best beam), with the shipped weights and the searched ones, on
   both synthetic sets and on the real spectra (``--real``; reported, never tuned on), and the
   spectrum-graph baseline on the same spectra, and the shipped rescoring at the baseline's
   coverage (its highest-scoring predictions, as many as the baseline makes: the baseline
   abstains where its graph has no path, and AA precision counts predicted residues only).

Usage: python benchmarks/peptide_rescoring.py [--n 1000] [--model M] [--beams 5] [--real ../shared/data/peptide/real_annotated_64.mgf]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from equipoise.peptide.baseline import run_baseline
from equipoise.peptide.decoding import DecodingConfig, beam_search
from equipoise.peptide.io import read_spectra
from equipoise.peptide.metrics import evaluate_predictions, top_scored
from equipoise.peptide.model import collate, load_model, prepare
from equipoise.peptide.rescoring import FEATURES, RescoringConfig, choose, graph_for, rescore_batch
from equipoise.peptide.sequence_cli import DEFAULT_MODEL
from equipoise.peptide.synth import synthesize

GRID = {"min_logp": (0, 0.1, 0.2, 0.5), "coverage": (1, 2, 4, 6, 8, 10), "both": (0, 1, 2, 4),
        "explained": (0, 0.5, 1, 2, 4), "error": (0, -2, -4, -8, -12, -16), "gap": (0, -1, -2, -4)}


def collect(model, spectra, decoding, config):
    """Per spectrum: (candidates, fallback) and the best beam's tokens."""
    graph = graph_for(model.vocab, config)
    out, beams = [], []
    for start in range(0, len(spectra), 64):
        chunk = spectra[start:start + 64]
        batch = collate([prepare(s, model.vocab, model.config) for s in chunk])
        out += rescore_batch(model, batch, chunk, decoding, config, graph)
        beams += [(p.tokens, p.score) if p else (None, -np.inf) for p in beam_search(model, batch, decoding)]
    return out, beams


def choices(found, weights):
    """The rescored prediction and combined score of each spectrum."""
    config = RescoringConfig(weights=tuple(weights))
    predictions, scores = [], []
    for cands, fallback in found:
        best = choose(cands, config)
        if best is not None:
            predictions.append(best.tokens)
            scores.append(best.combined)
        else:
            predictions.append(fallback.tokens if fallback else None)
            scores.append(-1e9)
    return predictions, scores


def metrics(found, truth, weights):
    return evaluate_predictions(truth, *choices(found, weights), by_length=False)


def row(name, m):
    return (f"{name:34s} AA prec {m.aa_precision:.3f}  AA rec {m.aa_recall:.3f}  pep rec {m.peptide_recall:.3f}  "
            f"AUC {m.auc:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--real", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" /
                                              "peptide" / "real_annotated_64.mgf"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beams", type=int, default=DecodingConfig().beams, help="beam width (sequence's default)")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model file (default: the shipped model)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    decoding, shipped = DecodingConfig(beams=args.beams), RescoringConfig()
    sets = {"synthetic seed 5 (tuning)": synthesize(args.n, seed=5),
            "synthetic seed 7 (held out)": synthesize(args.n, seed=7)}
    if Path(args.real).is_file():
        sets["real 64"] = read_spectra(args.real).spectra
    data = {}
    for name, spectra in sets.items():
        started = time.perf_counter()
        found, beams = collect(model, spectra, decoding, shipped)
        data[name] = (found, beams, [s.tokens for s in spectra], spectra)
        print(f"{name}: {len(spectra)} spectra, candidates in {time.perf_counter() - started:.0f} s", flush=True)

    tune_found, _, tune_truth, _ = data["synthetic seed 5 (tuning)"]
    weights = np.array(shipped.weights, dtype=float)

    def objective(w):
        m = metrics(tune_found, tune_truth, w)
        return m.peptide_recall + m.aa_precision

    best = objective(weights)
    for _ in range(2):
        for name, values in GRID.items():
            i = FEATURES.index(name)
            for value in values:
                trial = weights.copy()
                trial[i] = value
                score = objective(trial)
                if score > best + 1e-9:
                    best, weights = score, trial
    print("shipped weights ", dict(zip(FEATURES, shipped.weights)))
    print("searched weights", dict(zip(FEATURES, weights.tolist())))
    for name, (found, beams, truth, spectra) in data.items():
        print(f"--- {name}")
        print(row("model alone (best beam)", evaluate_predictions(truth, [b[0] for b in beams], [b[1] for b in beams],
                                                                by_length=False)))
        print(row("rescored, shipped weights", metrics(found, truth, shipped.weights)))
        print(row("rescored, searched weights", metrics(found, truth, weights)))
        psms = run_baseline(spectra)
        base = evaluate_predictions(truth, [p.tokens for p in psms], [p.score for p in psms], by_length=False)
        print(row("spectrum-graph baseline", base) + f"  ({base.n_predicted} of {len(truth)} predicted)")
        predictions, scores = choices(found, shipped.weights)
        print(row(f"rescored, its {base.n_predicted} best scores", evaluate_predictions(
            truth, top_scored(predictions, scores, base.n_predicted), scores, by_length=False))
            + "  (the baseline's coverage)")


if __name__ == "__main__":
    main()
