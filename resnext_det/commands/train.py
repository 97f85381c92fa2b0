"""``tools/train_net.py`` / ``resnext-det train``: detectron2's train_net shape around
:mod:`resnext_det.training` (see the tool's docstring for examples)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ResNeXtDetError
from ..training import (
    argument_parser,
    evaluate,
    launch_from_args,
    seed_runs_from_args,
    setup,
    train,
)


def run(args: argparse.Namespace) -> Any:
    """What each process runs (detectron2's launcher calls it with the parsed arguments)."""
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume, allow_partial_weights=args.allow_partial_weights)
    # --seed K is one run of a set: run again, it continues (as --seed-runs does)
    return train(cfg, resume=args.resume or args.seed is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    print("Command Line Args:", args)
    try:
        if seed_runs_from_args(args, parser) is None:
            launch_from_args(run, args, parser)
    except (ResNeXtDetError, FloatingPointError) as exc:
        # A bad config, weights file or data set, a busy OUTPUT_DIR, a diverged run
        # (NonFiniteLossError): the message names it and what to do; a traceback from deep
        # inside the trainer would add nothing.
        print(f"train_net: error: {exc}", file=sys.stderr)
        return 2
    return 0
