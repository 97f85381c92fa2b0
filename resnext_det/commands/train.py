"""``resnext-det train`` / ``tools/train_net.py``: detectron2's train_net command line around
:mod:`resnext_det.training` (see the tool's docstring for examples)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detectron2.engine import default_argument_parser

from ..errors import ConfigError
from ..runtime import set_console_verbosity
from ..training import build_config, evaluate, setup, torchrun_env, train, train_seed_runs
from ..training.seeds import SeedRunsInterrupted
from .common import (
    add_data_and_weights_arguments,
    command,
    configure_inference_process,
    configure_training_process,
    error_line,
    launch_from_args,
)

__all__ = ["MAX_SEED_RUNS", "argument_parser", "main", "run", "seed_runs_from_args"]

# More runs than this is a typo (each is a whole training run), refused before any work starts.
MAX_SEED_RUNS = 1000


def argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--register NAME JSON IMAGE_ROOT``,
    ``--allow-partial-weights``, ``--allow-unsafe-yaml`` and the seed-run flags."""
    parser = default_argument_parser(epilog)
    add_data_and_weights_arguments(parser)
    parser.add_argument(
        "--allow-unsafe-yaml",
        action="store_true",
        help="let --config-file use Python yaml tags (they run code when loaded); only for a file "
        "you trust. detectron2's own model-zoo configs need no flag",
    )
    runs = parser.add_argument_group(
        "seed runs",
        "runs of one config that differ only in SEED, each in OUTPUT_DIR/seed_<k>/; "
        "a run resumes from its checkpoint, or is skipped when finished, when run again",
    )
    which = runs.add_mutually_exclusive_group()
    which.add_argument(
        "--seed-runs", type=int, metavar="N", help="train seeds 0..N-1, one after another"
    )
    which.add_argument("--seeds", type=int, nargs="+", metavar="K", help="train these seeds")
    which.add_argument(
        "--seed",
        type=int,
        metavar="K",
        help="train only seed K (any launcher, torchrun too): one job of a Slurm array or of "
        "separate jobs run side by side",
    )
    runs.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="J",
        help="with --seed-runs/--seeds: J runs at once, in separate processes of one thread each",
    )
    return parser


def run(args: argparse.Namespace) -> Any:
    """What each process runs (detectron2's launcher calls it with the parsed arguments): its
    process set-up from the config, then training or ``--eval-only``."""
    cfg = setup(args)
    set_console_verbosity(getattr(args, "verbose", False))
    if args.eval_only:
        return evaluate(
            cfg,
            resume=args.resume,
            allow_partial_weights=args.allow_partial_weights,
            inference=configure_inference_process(cfg),
        )
    configure_training_process(cfg)
    # --seed K is one run of a set: run again, it continues (as --seed-runs does)
    return train(cfg, resume=args.resume or args.seed is not None)


def seed_runs_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> list[Path] | None:
    """``--seed-runs N`` / ``--seeds K ...``: train those runs (:func:`train_seed_runs`, each
    single-process, ``--parallel`` at once) and return their ``model_final.pth``; None when
    neither flag was given. Combinations that cannot work are usage errors naming the flags."""
    if args.seed_runs is not None:
        if not 1 <= args.seed_runs <= MAX_SEED_RUNS:
            parser.error(f"--seed-runs must be from 1 to {MAX_SEED_RUNS}; got {args.seed_runs}")
        seeds = list(range(args.seed_runs))
    elif args.seeds:
        seeds = list(args.seeds)
        if len(seeds) > MAX_SEED_RUNS:
            parser.error(f"--seeds: at most {MAX_SEED_RUNS} runs; got {len(seeds)}")
    else:
        if args.parallel != 1:
            parser.error("--parallel needs --seed-runs or --seeds")
        return None
    if args.eval_only:
        parser.error("--seed-runs/--seeds train; evaluate each run's model_final.pth instead")
    if args.num_gpus != 1 or args.num_machines != 1 or torchrun_env() is not None:
        parser.error(
            "--seed-runs/--seeds train single-process runs; for multi-process runs start one job "
            "per seed with --seed K"
        )
    if args.parallel < 1:
        parser.error(f"--parallel must be a positive integer; got {args.parallel}")
    cfg = build_config(args)
    # This process trains the runs itself when --parallel is 1 (workers set up their own).
    if args.parallel == 1:
        configure_training_process(cfg)
    try:
        return train_seed_runs(cfg, seeds, parallel=args.parallel)
    except ConfigError as exc:
        if "seeds must be" in str(exc):
            parser.error(f"--seeds: {exc}")
        raise


@command("train_net")
def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    print("Command Line Args:", args)
    try:
        if seed_runs_from_args(args, parser) is None:
            launch_from_args(run, args, parser)
    except SeedRunsInterrupted as exc:  # what finished, what stopped, how to go on
        print(f"train_net: {error_line(exc)}", file=sys.stderr)
        return exc.exit_status  # 130 (SIGINT) or 143 (SIGTERM)
    return 0
