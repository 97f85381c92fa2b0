"""What ``tools/train_net.py`` does, as functions: parse, set up, train or evaluate."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import load_config
from ..data import register_from_config
from ..env import environment_report
from ..errors import ConfigError
from ..io import write_text_atomic
from ..speed import apply_inference_config, autocast
from ..weights import configure_for_weights, explicit_keys
from ..weights.hub import SCHEMES as WEIGHTS_SCHEMES
from .checkpoint import TrainingCheckpointer
from .launch import LaunchArgumentError, launch, torchrun_env
from .lock import OutputDirInUseError, lock_output_dir
from .seeds import seed_run_config, train_seed_runs
from .state import make_deterministic
from .trainer import Trainer

__all__ = [
    "argument_parser",
    "setup",
    "train",
    "evaluate",
    "configure_input_for_weights",
    "make_deterministic",
    "default_setup",
    "build_config",
    "seed_runs_from_args",
    "train_seed_runs",
    "launch_from_args",
    "hold_output_dir",
]

logger = logging.getLogger(__name__)


def add_data_and_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--register`` and ``--allow-partial-weights``: what the yacs and the LazyConfig trainers'
    command lines share beyond detectron2's ``default_argument_parser``."""
    parser.add_argument(
        "--register",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME before building (repeatable), checked "
        "when registered; for yacs configs the same as adding [NAME, JSON, IMAGE_ROOT] to "
        "DATASETS.COCO_REGISTER",
    )
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="--eval-only: score the model even if its weights leave parameters (heads) at "
        "their random initialisation (refused otherwise, naming them)",
    )


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


def _has_last_checkpoint(cfg: CfgNode) -> bool:
    return os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))


def configure_input_for_weights(
    cfg: CfgNode, *, resume: bool = False, pinned: set[str] | None = None
) -> None:
    """Set the input conventions (INPUT.FORMAT, PIXEL_MEAN/STD, STRIDE_IN_1X1) of MODEL.WEIGHTS.

    Skipped when resuming from a checkpoint in OUTPUT_DIR (MODEL.WEIGHTS is then not read) and
    for iopath URLs (``detectron2://``), which keep the config's conventions; names and URLs
    (``torchvision://``, ``timm://``, ``http(s)://``) are fetched and checked.

    Args:
        cfg: the config, changed in place.
        resume: whether ``--resume`` was given.
        pinned: keys the user set (config file, command line); a conflict with the weights is an
            error instead of being overwritten.

    Raises:
        FileNotFoundError: MODEL.WEIGHTS names a local file that does not exist.
        ValueError: a pinned key contradicts the weights, or the architecture differs.
    """
    weights = cfg.MODEL.WEIGHTS
    named = weights.startswith(WEIGHTS_SCHEMES)  # torchvision://, timm://, http(s)://: fetched
    if not weights or (resume and _has_last_checkpoint(cfg)) or ("://" in weights and not named):
        return
    if not named and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights!r} does not exist (relative paths are from {os.getcwd()}). "
            "Name ImageNet weights instead (MODEL.WEIGHTS torchvision://resnext50_32x4d, fetched "
            "once into torch's hub cache), pass a file's path, or MODEL.WEIGHTS '' to train from "
            "scratch."
        )
    configure_for_weights(cfg, weights, pinned=pinned)


def default_setup(cfg: CfgNode, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup``: logger, environment and config in the log, ``config.yaml``
    in OUTPUT_DIR, seeding (``SEED + rank``), cuDNN benchmark flag.

    Re-implemented because detectron2 0.6's version calls ``collect_env_info``, which raises
    without detectron2's compiled ops, and writes ``config.yaml`` in place (here atomically).
    """
    output_dir = cfg.OUTPUT_DIR
    if comm.is_main_process() and output_dir:
        os.makedirs(output_dir, exist_ok=True)
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    log = setup_logger(output_dir, distributed_rank=rank)
    setup_logger(output_dir, distributed_rank=rank, name="resnext_det")
    log.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    log.info("Environment info:\n" + environment_report())
    log.info(f"Command line arguments: {args}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        log.info(f"Running with full config:\n{cfg.dump()}")
        write_text_atomic(path, cfg.dump())
        log.info(f"Full config saved to {path}")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def hold_output_dir(cfg: CfgNode) -> None:
    """Lock ``cfg.OUTPUT_DIR`` for this run (:mod:`resnext_det.training.lock`) before anything
    is written there; in every process of a distributed run, which all stop if it is taken.

    The main process holds the lock; the others learn the outcome from it, so that none of them
    writes its log into a folder another run owns.

    Raises:
        OutputDirInUseError: another live run holds OUTPUT_DIR.
    """
    refused = None
    if comm.is_main_process():
        try:
            lock_output_dir(cfg.OUTPUT_DIR)
        except OutputDirInUseError as exc:
            refused = str(exc)
    if comm.get_world_size() > 1:
        refused = comm.all_gather(refused)[0]
    if refused is not None:
        raise OutputDirInUseError(refused)


def build_config(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``--config-file``, trailing ``KEY VALUE`` pairs, ``--register``, the
    conventions of MODEL.WEIGHTS and ``--seed`` (SEED and OUTPUT_DIR/seed_<k>); nothing written."""
    unsafe = getattr(args, "allow_unsafe_yaml", False)
    cfg = load_config(args.config_file or None, args.opts or [], allow_unsafe_yaml=unsafe)
    for entry in getattr(args, "register", None) or []:
        cfg.DATASETS.COCO_REGISTER.append(list(entry))
    if getattr(args, "seed", None) is not None:
        cfg = seed_run_config(cfg, args.seed)
        cfg.defrost()
    pinned = explicit_keys(args.config_file or None, args.opts, allow_unsafe_yaml=unsafe)
    configure_input_for_weights(cfg, resume=args.resume, pinned=pinned)
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """:func:`build_config`; then the OUTPUT_DIR lock (:func:`hold_output_dir`), detectron2's
    ``default_setup`` (logging, seeding, config.yaml), determinism and datasets."""
    cfg = build_config(args)
    hold_output_dir(cfg)
    default_setup(cfg, args)
    if cfg.DETERMINISTIC:
        make_deterministic()
    register_from_config(cfg)  # in each process: spawned workers do not inherit the catalog
    return cfg


def evaluate(
    cfg: CfgNode, *, resume: bool = False, allow_partial_weights: bool = False
) -> dict[str, Any]:
    """``--eval-only``: load MODEL.WEIGHTS (or, with ``resume``, the last checkpoint in
    OUTPUT_DIR), apply the inference switches of ``MODEL.RESNEXT`` (``OPTIMIZE_FOR_INFERENCE``,
    ``COMPILE``, ``INFERENCE_AMP_DTYPE``), and run the COCO evaluation.

    Weights that leave a detector parameter missing or of another shape (a backbone-only file,
    heads of another NUM_CLASSES) are refused, naming the groups, unless
    ``allow_partial_weights`` (``--allow-partial-weights``)."""
    from ..weights.complete import check_complete_weights

    model = Trainer.build_model(cfg)
    checkpointer = TrainingCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    path = (
        checkpointer.get_checkpoint_file()
        if resume and checkpointer.has_checkpoint()
        else cfg.MODEL.WEIGHTS
    )
    for problem in check_complete_weights(model, path, allow_partial=allow_partial_weights):
        logger.warning("--allow-partial-weights: %s", problem)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    model = apply_inference_config(model.eval(), cfg)
    with autocast(cfg.MODEL.DEVICE, cfg.MODEL.RESNEXT.INFERENCE_AMP_DTYPE):
        results = Trainer.test(cfg, model)
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def train(cfg: CfgNode, *, resume: bool = False) -> dict[str, Any] | None:
    """Train with :class:`Trainer`; with ``resume``, continue from the last whole checkpoint.

    Holds OUTPUT_DIR (a no-op after :func:`setup`, which already took it).
    """
    hold_output_dir(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer.train()


# detectron2's launcher flags (default_argument_parser), by the launch() argument each sets.
_LAUNCH_FLAGS = {
    "num_gpus_per_machine": "--num-gpus",
    "num_machines": "--num-machines",
    "machine_rank": "--machine-rank",
    "dist_url": "--dist-url",
}


def launch_from_args(
    main_func: Callable[[argparse.Namespace], Any],
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
) -> Any:
    """:func:`~resnext_det.training.launch` ``main_func(args)`` with the parsed launcher flags.

    An argument :func:`launch` refuses is a usage error (exit status 2) naming the flag.
    """
    try:
        return launch(
            main_func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except LaunchArgumentError as exc:
        parser.error(f"{_LAUNCH_FLAGS.get(exc.argument, exc.argument)} {exc.problem}")


def seed_runs_from_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> list[Path] | None:
    """``--seed-runs N`` / ``--seeds K ...``: train those runs (:func:`train_seed_runs`, each
    single-process, ``--parallel`` at once) and return their ``model_final.pth``; None when
    neither flag was given. Combinations that cannot work are usage errors naming the flags."""
    if args.seed_runs is not None:
        if args.seed_runs < 1:
            parser.error(f"--seed-runs must be at least 1; got {args.seed_runs}")
        seeds = list(range(args.seed_runs))
    elif args.seeds:
        seeds = list(args.seeds)
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
    try:
        return train_seed_runs(build_config(args), seeds, parallel=args.parallel)
    except ConfigError as exc:
        if "seeds must be" in str(exc):
            parser.error(f"--seeds: {exc}")
        raise
