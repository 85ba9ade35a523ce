"""Synthetic-data and baseline benchmark of equipoise.peptide (peptide-A's part).

Measures, in one run on this machine:
- synthetic generation speed (spectra/s) for N spectra, as a ratio against reading the same
  spectra back from MGF with ``read_spectra`` (the reference: what a training loader pays anyway);
- the annotation statistics of the synthetic spectra against the real annotated spectra in
  ../shared/data/peptide/real_annotated_64.mgf, with the comparison plot;
- the spectrum-graph baseline's metrics on the real spectra and on a synthetic test set.

Usage: OMP_NUM_THREADS=1 python benchmarks/peptide_data.py [--n 100000] [--test 1000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from equipoise.peptide.baseline import run_baseline
from equipoise.peptide.io import read_spectra, write_mgf
from equipoise.peptide.evaluate import evaluate_psms
from equipoise.peptide.spectrum_stats import plot_comparison, spectrum_stats
from equipoise.peptide.synth import synthesize

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "peptide" / "real_annotated_64.mgf"


def _metrics(spectra) -> dict:
    t = time.perf_counter()
    psms = run_baseline(spectra)
    rate = len(spectra) / (time.perf_counter() - t)
    m = evaluate_psms(psms, [s.tokens for s in spectra]).metrics
    return {"spectra_per_s": rate, **m.as_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--test", type=int, default=1000, help="synthetic test spectra for the baseline")
    parser.add_argument("--out", default="runs/peptide_data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"n": args.n, "machine": "shared, loaded (2 cores for 8 helpers)"}
    t = time.perf_counter()
    spectra = synthesize(args.n, 1)
    gen_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.mgf"
        t = time.perf_counter()
        write_mgf(path, spectra)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        read = read_spectra(path).spectra
        read_s = time.perf_counter() - t
        assert len(read) == args.n
    result |= {"generate_spectra_per_s": args.n / gen_s, "write_mgf_spectra_per_s": args.n / write_s,
               "read_mgf_spectra_per_s": args.n / read_s, "generate_over_read": read_s / gen_s}
    print(f"generate {args.n / gen_s:8.0f} spectra/s   write MGF {args.n / write_s:8.0f}/s   "
          f"read MGF (reference) {args.n / read_s:8.0f}/s   generate/read speed ratio {read_s / gen_s:.2f}")
    syn = spectrum_stats(spectra[:10_000])
    result["synthetic_stats"] = syn.summary_dict()
    if REAL.is_file():
        real_spectra = read_spectra(REAL).spectra
        real = spectrum_stats(real_spectra)
        result["real_stats"] = real.summary_dict()
        plot_comparison(syn, real, out / "synthetic_vs_real.png")
        print(f"{'statistic':32s} {'synthetic':>10s} {'real':>10s}")
        for key in result["real_stats"]:
            print(f"{key:32s} {result['synthetic_stats'][key]:10.3f} {result['real_stats'][key]:10.3f}")
        result["baseline_real"] = _metrics(real_spectra)
    result["baseline_synthetic_test"] = _metrics(synthesize(args.test, 2))
    for name in ("baseline_real", "baseline_synthetic_test"):
        if name in result:
            r = result[name]
            print(f"{name}: AA precision {r['aa_precision']:.3f} AA recall {r['aa_recall']:.3f} "
                  f"peptide recall {r['peptide_recall']:.3f} AUC {r['auc']:.3f} ({r['spectra_per_s']:.1f} spectra/s)")
    (out / "peptide_data.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'peptide_data.json'}")


if __name__ == "__main__":
    main()
