"""``equipoise ensemble sample DIR --n 100 [--seed 1] [--temperature T] [--around FILE] --out samples.pdb``.

Registration imports nothing heavy; the handler imports torch and the model.
"""

from __future__ import annotations

import argparse

_EPILOG = """\
Samples from the prior (conditioned on the run's sequence), or with --around FILE from the
posterior around that file's models, refines the geometry (--refine-steps L-BFGS steps, 0: off)
and writes a multi-model PDB (or mmCIF for .cif) with the real sequence, plus OUT.json (timings,
refinement report). Check the samples with `equipoise ensemble validate`.
"""


def register_sample(commands: argparse._SubParsersAction) -> None:
    """Add ``sample`` to the ``ensemble`` sub-commands."""
    p = commands.add_parser("sample", help="sample conformers from a trained model",
                            description="Sample backbone conformers from a model trained by `ensemble train`.",
                            epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="DIR", help="run directory of `ensemble train`")
    p.add_argument("--out", required=True, metavar="FILE", help="output multi-model PDB/mmCIF")
    p.add_argument("--n", type=int, default=100, help="number of conformers (default 100)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="latent spread scale, times the run's calibrated temperature (default 1)")
    p.add_argument("--around", metavar="FILE", default=None,
                   help="sample the posterior around this file's models instead of the prior")
    p.add_argument("--refine-steps", type=int, default=25, help="geometry refinement L-BFGS steps (default 25)")
    p.add_argument("--protein", default=None, metavar="NAME",
                   help="protein (name or index) of a model trained on several (`ensemble train A B ...`)")
    p.set_defaults(handler=_sample)


def _sample(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from equipoise.ensemble.io import read_ensemble, write_ensemble
    from equipoise.ensemble.sample import SampleConfig, sample

    config = SampleConfig(n=args.n, seed=args.seed, temperature=args.temperature, refine_steps=args.refine_steps)
    config.check()
    around = read_ensemble(args.around).coords if args.around else None
    result = sample(args.run_dir, config, around=around, protein=args.protein)
    out = Path(args.out)
    write_ensemble(result.ensemble, out)
    report = {"n": args.n, "seed": args.seed, "protein": args.protein, "temperature": args.temperature, "around": args.around,
              "decode_seconds": result.decode_seconds, "refine_seconds": result.refine_seconds,
              "refinement": result.refinement}
    out.with_name(out.name + ".json").write_text(json.dumps(report, indent=1))
    print(result.summary())
    print(f"wrote {out} and {out.name}.json")
    return 0
