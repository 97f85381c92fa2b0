"""What ``tools/train_net.py`` does, as functions: parse, set up, train or evaluate."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
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
from ..io import write_text_atomic
from ..speed import apply_inference_config, autocast
from ..weights import configure_for_weights, explicit_keys
from .checkpoint import TrainingCheckpointer
from .launch import LaunchArgumentError, launch
from .trainer import Trainer

__all__ = [
    "argument_parser",
    "setup",
    "train",
    "evaluate",
    "configure_input_for_weights",
    "make_deterministic",
    "default_setup",
    "launch_from_args",
]

logger = logging.getLogger(__name__)


def argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--register NAME JSON IMAGE_ROOT``."""
    parser = default_argument_parser(epilog)
    parser.add_argument(
        "--register",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME before building (repeatable); the same as "
        "adding [NAME, JSON, IMAGE_ROOT] to DATASETS.COCO_REGISTER",
    )
    parser.add_argument(
        "--allow-unsafe-yaml",
        action="store_true",
        help="let --config-file use Python yaml tags (they run code when loaded); only for a file "
        "you trust. detectron2's own model-zoo configs need no flag",
    )
    return parser


def _has_last_checkpoint(cfg: CfgNode) -> bool:
    return os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))


def configure_input_for_weights(
    cfg: CfgNode, *, resume: bool = False, pinned: set[str] | None = None
) -> None:
    """Set the input conventions (INPUT.FORMAT, PIXEL_MEAN/STD, STRIDE_IN_1X1) of MODEL.WEIGHTS.

    Skipped when resuming from a checkpoint in OUTPUT_DIR (MODEL.WEIGHTS is then not read) and
    for remote weights (``detectron2://``, ``https://``), which keep the config's conventions.

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
    if not weights or (resume and _has_last_checkpoint(cfg)) or "://" in weights:
        return
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights!r} does not exist (relative paths are from {os.getcwd()}). "
            "The ImageNet configs name torchvision's files (e.g. resnext50_32x4d-1a0047aa.pth "
            "from https://download.pytorch.org/models/): download it and pass its path with "
            "MODEL.WEIGHTS /path/to/file, or MODEL.WEIGHTS '' to train from scratch."
        )
    configure_for_weights(cfg, weights, pinned=pinned)


def make_deterministic() -> None:
    """Ask torch for deterministic kernels (``DETERMINISTIC True``); ops without one warn."""
    # cuBLAS needs this before its first use to be deterministic (torch's reproducibility notes).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _environment_info() -> str:
    try:
        from detectron2.utils.collect_env import collect_env_info

        return collect_env_info()
    except RuntimeError as exc:
        # A detectron2 without compiled ops cannot report its compiler. (torch's own report
        # runs pip and nvidia-smi: seconds, so a short summary instead.)
        import platform

        import detectron2
        import torchvision

        return (
            f"Python {platform.python_version()}, torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, detectron2 {detectron2.__version__} ({exc}), CUDA "
            f"available: {torch.cuda.is_available()}, CPU threads: {torch.get_num_threads()}"
        )


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
    log.info("Environment info:\n" + _environment_info())
    log.info(f"Command line arguments: {args}")
    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        log.info(f"Running with full config:\n{cfg.dump()}")
        write_text_atomic(path, cfg.dump())
        log.info(f"Full config saved to {path}")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from ``--config-file``, trailing ``KEY VALUE`` pairs and ``--register``; then
    detectron2's ``default_setup`` (logging, seeding, config.yaml), determinism and datasets."""
    unsafe = getattr(args, "allow_unsafe_yaml", False)
    cfg = load_config(args.config_file or None, args.opts or [], allow_unsafe_yaml=unsafe)
    for entry in getattr(args, "register", None) or []:
        cfg.DATASETS.COCO_REGISTER.append(list(entry))
    pinned = explicit_keys(args.config_file or None, args.opts, allow_unsafe_yaml=unsafe)
    configure_input_for_weights(cfg, resume=args.resume, pinned=pinned)
    cfg.freeze()
    default_setup(cfg, args)
    if cfg.DETERMINISTIC:
        make_deterministic()
    register_from_config(cfg)  # in each process: spawned workers do not inherit the catalog
    return cfg


def evaluate(cfg: CfgNode, *, resume: bool = False) -> dict[str, Any]:
    """``--eval-only``: load MODEL.WEIGHTS (or, with ``resume``, the last checkpoint in
    OUTPUT_DIR), apply the inference switches of ``MODEL.RESNEXT`` (``OPTIMIZE_FOR_INFERENCE``,
    ``COMPILE``, ``INFERENCE_AMP_DTYPE``), and run the COCO evaluation."""
    model = Trainer.build_model(cfg)
    TrainingCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=resume
    )
    model = apply_inference_config(model.eval(), cfg)
    with autocast(cfg.MODEL.DEVICE, cfg.MODEL.RESNEXT.INFERENCE_AMP_DTYPE):
        results = Trainer.test(cfg, model)
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def train(cfg: CfgNode, *, resume: bool = False) -> dict[str, Any] | None:
    """Train with :class:`Trainer`; with ``resume``, continue from the last whole checkpoint."""
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
