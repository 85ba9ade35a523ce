"""``equipoise peptide train --train TRAIN.mgf --val VAL.mgf --out DIR [--config recipe.toml]``.

Thin layer over :func:`equipoise.peptide.train.train`; registration imports nothing heavy.
"""

from __future__ import annotations

import argparse


def register_train(commands: argparse._SubParsersAction) -> None:
    """Add the ``train`` action to the ``peptide`` sub-parser ``commands``."""
    parser = commands.add_parser(
        "train", help="train the de novo model on labelled spectra",
        description="Train the transformer on labelled spectra (SEQ=) with CE + spectrum + precursor terms, "
                    "balanced by equipoise.core; resumes from DIR when it holds a checkpoint. Writes "
                    "DIR/model.pt, DIR/best.pt, DIR/validation.jsonl and DIR/fit/ (record, summary, log).")
    parser.add_argument("--train", required=True, metavar="TRAIN.mgf", help="labelled training spectra")
    parser.add_argument("--val", required=True, metavar="VAL.mgf", help="labelled validation spectra")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory")
    parser.add_argument("--config", metavar="RECIPE.toml", help="training recipe (default: the shipped recipe)")
    parser.add_argument("--max-seconds", type=float, metavar="S", help="wall-time budget, overrides the recipe")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: all cores)")
    parser.add_argument("--restart", action="store_true", help="ignore a checkpoint in DIR and start over")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    import os
    from dataclasses import replace

    import torch

    from equipoise.core import distributed
    from equipoise.peptide.train import load_recipe, train

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    config = load_recipe(args.config)
    if args.max_seconds is not None:
        config = replace(config, max_seconds=args.max_seconds)
    with distributed.launched() as context:  # a no-op without torchrun
        quiet = args.quiet or not context.is_main
        result = train(args.train, args.val, args.out, config, progress="quiet" if quiet else "auto",
                       resume=not args.restart)
        if context.is_main:
            print(result.summary())
    return 0
