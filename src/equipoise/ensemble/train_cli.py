"""``equipoise ensemble train ENSEMBLE.pdb|.cif [ENSEMBLE ...] [--holdout 0.2] [--minutes 20] [--seed 1] --out DIR``.

Several ENSEMBLE files train one model on all the proteins; under ``torchrun`` the processes
share each step's pairs (data parallel). ``--topology`` reads ENSEMBLE as an MD trajectory.

Registration imports nothing heavy; the handler imports torch and the model.
"""

from __future__ import annotations

import argparse

_EPILOG = """\
Trains the VAE on a seeded (1 - holdout) share of the models (the held-out models go to
DIR/holdout.pdb, their indices to DIR/split.json). Writes DIR/model.pt (for `ensemble sample`),
DIR/train.json, and the core run directory DIR/fit (config.json, record.jsonl with every term's
share and the latent collapse diagnostic, summary.json, run.log, checkpoint.pt, plots/).
Running the same command again resumes from the checkpoint. With several ENSEMBLE files one
model learns every protein (held-out models in DIR/holdout_<name>.pdb; `ensemble sample
--protein NAME`). Data parallel on N processes (CPU: gloo; GPUs: nccl):
  torchrun --nproc_per_node=N -m equipoise ensemble train A.pdb B.pdb --out DIR
See docs/ensemble.md.
"""


def register_train(commands: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``ensemble`` sub-commands."""
    p = commands.add_parser("train", help="train the generative model (VAE) on an ensemble",
                            description="Train the ensemble VAE on a multi-model PDB/mmCIF file.",
                            epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ensembles", metavar="ENSEMBLE", nargs="+",
                   help="multi-model PDB or mmCIF file (.gz allowed); several: one model for all the proteins")
    p.add_argument("--topology", metavar="FILE", default=None,
                   help="read ENSEMBLE (one) as an MD trajectory (DCD, XTC, ...) with this topology (PSF, PDB, GRO), "
                        "through MDAnalysis")
    p.add_argument("--selection", default="protein", help="MDAnalysis selection with --topology (default 'protein')")
    p.add_argument("--stride", type=int, default=1, help="every n-th trajectory frame with --topology (default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory")
    p.add_argument("--chain", default=None, help="chain to read (default: the first)")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of models held out (default 0.2)")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget in minutes (default 20)")
    p.add_argument("--steps", type=int, default=None, help="step budget (default: until the time budget ends)")
    p.add_argument("--seed", type=int, default=1, help="seed of the split, the model and the batches (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="training pairs per step (default 16)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from equipoise.core import distributed, plot_run
    from equipoise.ensemble.io import read_ensemble, read_trajectory
    from equipoise.ensemble.train import TrainConfig, train
    from equipoise.errors import InputError

    config = TrainConfig(holdout=args.holdout, minutes=args.minutes, seed=args.seed, batch_size=args.batch_size)
    if args.steps is not None:
        config.steps = args.steps
    config.check()
    if args.topology is not None and len(args.ensembles) != 1:
        raise InputError(f"--topology reads one trajectory, got {len(args.ensembles)} ENSEMBLE files", field="--topology")
    if args.topology is not None:
        ensembles = [read_trajectory(args.topology, args.ensembles[0], selection=args.selection, stride=args.stride)]
    else:
        ensembles = [read_ensemble(path, chain=args.chain) for path in args.ensembles]
    with distributed.launched() as context:
        quiet = args.quiet or not context.is_main
        result = train(ensembles, args.out, config, progress="quiet" if quiet else "auto")
        if context.is_main:
            plot_run(result.out_dir / "fit")
            print(result.summary())
    return 0
