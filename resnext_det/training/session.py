"""What ``resnext-det train`` (``tools/train_net.py``) does in each process, as functions: set
up, train or evaluate. Its command line is :mod:`resnext_det.commands.train`."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import load_config
from ..data import register_from_config
from ..env import environment_report
from ..io import write_text_atomic
from ..speed import (
    InferenceChoice,
    InferenceSettings,
    autocast,
    cpu_training_settings,
    prepare_for_inference,
)
from ..weights import configure_for_weights, explicit_keys
from ..weights.hub import SCHEMES as WEIGHTS_SCHEMES
from .checkpoint import TrainingCheckpointer
from .lock import OutputDirInUseError, lock_output_dir
from .outputs import check_run_folder
from .seeds import seed_run_config
from .state import make_deterministic
from .trainer import Trainer
from .validate import check_training_config

__all__ = [
    "setup",
    "train",
    "evaluate",
    "configure_input_for_weights",
    "make_deterministic",
    "default_setup",
    "build_config",
    "hold_output_dir",
]

logger = logging.getLogger(__name__)


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
    if not named and os.path.isdir(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights!r} is a folder, not a weights file; name the checkpoint "
            "in it (e.g. model_final.pth)"
        )
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
    conventions of MODEL.WEIGHTS and ``--seed`` (SEED and OUTPUT_DIR/seed_<k>), checked before
    anything is written: where it writes (:func:`~.outputs.check_run_folder`) and its values
    (:func:`~.validate.check_training_config`, the inference and CPU-training keys)."""
    unsafe = getattr(args, "allow_unsafe_yaml", False)
    cfg = load_config(args.config_file or None, args.opts or [], allow_unsafe_yaml=unsafe)
    for entry in getattr(args, "register", None) or []:
        cfg.DATASETS.COCO_REGISTER.append(list(entry))
    if getattr(args, "seed", None) is not None:
        cfg = seed_run_config(cfg, args.seed)
        cfg.defrost()
    if not (getattr(args, "seed_runs", None) or getattr(args, "seeds", None)):
        # (seed runs check each of their folders: train_runs)
        training = not getattr(args, "eval_only", False)
        check_run_folder(cfg, args.config_file or None, training=training)
    pinned = explicit_keys(args.config_file or None, args.opts, allow_unsafe_yaml=unsafe)
    configure_input_for_weights(cfg, resume=args.resume, pinned=pinned)
    check_training_config(cfg, eval_only=getattr(args, "eval_only", False))
    # keys read later, checked now: a bad value is refused before the output folder is touched
    InferenceSettings.from_config(cfg)
    cpu_training_settings(cfg)
    cfg.freeze()
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """:func:`build_config`; then the OUTPUT_DIR lock (:func:`hold_output_dir`), the datasets
    (checked before anything is written), detectron2's ``default_setup`` (logging, seeding,
    config.yaml) and determinism."""
    cfg = build_config(args)
    hold_output_dir(cfg)
    register_from_config(cfg)  # in each process: spawned workers do not inherit the catalog
    default_setup(cfg, args)
    if cfg.DETERMINISTIC:
        make_deterministic()
    return cfg


def evaluate(
    cfg: CfgNode,
    *,
    resume: bool = False,
    allow_partial_weights: bool = False,
    inference: InferenceChoice = None,
) -> dict[str, Any]:
    """``--eval-only``: load MODEL.WEIGHTS (or, with ``resume``, the last checkpoint in
    OUTPUT_DIR), apply the inference settings (settings, a function of ``cfg`` giving them, or by
    default those of ``MODEL.RESNEXT``:
    ``OPTIMIZE_FOR_INFERENCE``, ``COMPILE``, ``INFERENCE_AMP_DTYPE``), and run the COCO
    evaluation.

    Weights that leave a detector parameter missing or of another shape (a backbone-only file,
    heads of another NUM_CLASSES) are refused, naming the groups, unless
    ``allow_partial_weights`` (``--allow-partial-weights``)."""
    model = Trainer.build_model(cfg)
    checkpointer = TrainingCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    problems = checkpointer.load_complete(
        cfg.MODEL.WEIGHTS, resume=resume, allow_partial=allow_partial_weights
    )
    for problem in problems:
        logger.warning("--allow-partial-weights: %s", problem)
    inference = InferenceSettings.resolve(inference, cfg)
    model = prepare_for_inference(model, inference)
    with autocast(cfg.MODEL.DEVICE, inference.amp_dtype):
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
