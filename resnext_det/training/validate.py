"""Values of a training or evaluation config that detectron2 would crash on (an assertion, a
division by zero, a shape error deep in the model) or silently misuse, refused up front: one
line naming the key, the value and what is allowed, before anything is written.

Only values that cannot work are refused; what detectron2 accepts on purpose stays allowed
(``SOLVER.STEPS`` beyond ``MAX_ITER``, which it drops with a warning; ``TEST.EVAL_PERIOD`` 0 or
negative, evaluation at the end only). What :func:`check_training_config` cannot know (the
number of processes a batch is split over) stays detectron2's to check.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

import torch
from detectron2.config import CfgNode

from ..config import config_value
from ..errors import ConfigError

__all__ = ["check_training_config"]

# Channels of each INPUT.FORMAT (resnext_det.config.INPUT_FORMATS) as read_image gives them.
_FORMAT_CHANNELS = {"BGR": 3, "RGB": 3, "YUV-BT.601": 3, "L": 1}
# The heads of each detectron2 meta-architecture that have a class count.
_CLASS_KEYS = {
    "GeneralizedRCNN": ("ROI_HEADS",),
    "PanopticFPN": ("ROI_HEADS", "SEM_SEG_HEAD"),
    "SemanticSegmentor": ("SEM_SEG_HEAD",),
    "RetinaNet": ("RETINANET",),
}
_LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR")  # detectron2's build_lr_scheduler
_WARMUP_METHODS = ("linear", "constant")  # detectron2's WarmupParamScheduler
_ACCELERATORS = ("cuda", "mps", "xpu")


def check_training_config(cfg: CfgNode, *, eval_only: bool) -> None:
    """Refuse a config value that ``resnext-det train`` (or ``--eval-only``, which skips the
    training-only keys) cannot run with.

    Checked: ``MODEL.DEVICE`` (a device torch has here), the class counts of the heads
    ``MODEL.META_ARCHITECTURE`` builds, ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` against each other
    and ``INPUT.FORMAT``, ``DATALOADER.NUM_WORKERS``, the names in ``DATASETS.TEST`` (and
    ``DATASETS.TRAIN``) against detectron2's catalog and ``DATASETS.COCO_REGISTER``; for
    training also ``SOLVER.IMS_PER_BATCH``, ``MAX_ITER``, ``BASE_LR``, ``WARMUP_ITERS``,
    ``WARMUP_METHOD``, ``LR_SCHEDULER_NAME``, ``STEPS`` and ``CHECKPOINT_PERIOD``.

    Raises:
        ConfigError: the first value not allowed, naming the key, the value and what is allowed.
    """
    _check_device(cfg.MODEL.DEVICE)
    _check_num_classes(cfg)
    _check_pixel_stats(cfg)
    _check_int(cfg, "DATALOADER.NUM_WORKERS", 0, "(0: load in the main process)")
    if not eval_only:
        _check_datasets(cfg, "DATASETS.TRAIN", allow_empty=False)
    _check_datasets(cfg, "DATASETS.TEST", allow_empty=True)
    if eval_only:
        return
    _check_int(cfg, "SOLVER.IMS_PER_BATCH", 1, "(images per iteration, over all processes)")
    _check_int(cfg, "SOLVER.MAX_ITER", 1, "(the number of training iterations)")
    _check_int(cfg, "SOLVER.CHECKPOINT_PERIOD", 1, "(iterations between checkpoints)")
    _check_int(cfg, "SOLVER.WARMUP_ITERS", 0, "(0: no warm-up)")
    lr = cfg.SOLVER.BASE_LR
    if not _is_real(lr) or not math.isfinite(lr) or lr < 0:
        raise ConfigError(f"SOLVER.BASE_LR must be a finite number >= 0; got {lr!r}")
    _check_choice("SOLVER.WARMUP_METHOD", cfg.SOLVER.WARMUP_METHOD, _WARMUP_METHODS)
    _check_choice("SOLVER.LR_SCHEDULER_NAME", cfg.SOLVER.LR_SCHEDULER_NAME, _LR_SCHEDULERS)
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        _check_steps(cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_int(cfg: CfgNode, key: str, lowest: int, meaning: str) -> None:
    value = config_value(cfg, key)
    if not _is_int(value) or value < lowest:
        what = "a positive integer" if lowest == 1 else f"an integer >= {lowest}"
        raise ConfigError(f"{key} must be {what} {meaning}; got {value!r}")


def _check_choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _check_device(device: Any) -> None:
    allowed = "cpu, cuda or cuda:N (mps, xpu where torch has them)"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"MODEL.DEVICE must be {allowed}; got {device!r}") from None
    if dev.type == "cpu":
        return
    if dev.type not in _ACCELERATORS:
        raise ConfigError(f"MODEL.DEVICE must be {allowed}; got {device!r}")
    if dev.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        count = int(backend is not None and backend.is_available())
    else:
        module = getattr(torch, dev.type, None)
        available = module is not None and module.is_available()
        count = module.device_count() if available else 0
    if not count:
        raise ConfigError(
            f"MODEL.DEVICE is {device!r}, but torch sees no {dev.type.upper()} device on this "
            f"machine (torch {torch.__version__}); use MODEL.DEVICE cpu"
        )
    if dev.index is not None and dev.index >= count:
        raise ConfigError(
            f"MODEL.DEVICE is {device!r}, but torch sees {count} {dev.type.upper()} device(s) "
            f"here, {dev.type}:0 to {dev.type}:{count - 1}"
        )


def _check_num_classes(cfg: CfgNode) -> None:
    arch = cfg.MODEL.META_ARCHITECTURE
    for head in _CLASS_KEYS.get(arch, ()):
        value = cfg.MODEL[head].NUM_CLASSES
        if not _is_int(value) or value < 1:
            raise ConfigError(
                f"MODEL.{head}.NUM_CLASSES must be a positive integer (the number of object "
                f"classes of the {arch} model, background not counted); got {value!r}"
            )
    if arch in ("GeneralizedRCNN", "PanopticFPN") and cfg.MODEL.KEYPOINT_ON:
        value = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        if not _is_int(value) or value < 1:
            raise ConfigError(
                "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS must be a positive integer with "
                f"MODEL.KEYPOINT_ON True; got {value!r}"
            )


def _check_pixel_stats(cfg: CfgNode) -> None:
    mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    for key, values in (("MODEL.PIXEL_MEAN", mean), ("MODEL.PIXEL_STD", std)):
        if not values or not all(_is_real(v) and math.isfinite(v) for v in values):
            raise ConfigError(
                f"{key} must be a list of finite numbers, one per channel; got {values}"
            )
    if len(mean) != len(std):
        raise ConfigError(
            f"MODEL.PIXEL_MEAN and MODEL.PIXEL_STD must have one value per input channel each; "
            f"got {len(mean)} ({mean}) and {len(std)} ({std})"
        )
    fmt = cfg.INPUT.FORMAT
    channels = _FORMAT_CHANNELS.get(fmt)
    # One channel (L) under a 3-channel mean/std is broadcast to three (gray fed to an RGB net).
    allowed = (1, 3) if channels == 1 else (channels,)
    if channels is not None and len(mean) not in allowed:
        raise ConfigError(
            f"MODEL.PIXEL_MEAN has {len(mean)} values ({mean}), but INPUT.FORMAT {fmt} images "
            f"have {channels} channels: give {' or '.join(map(str, allowed))} values "
            "(MODEL.PIXEL_MEAN and MODEL.PIXEL_STD)"
        )
    if any(v == 0 for v in std):
        raise ConfigError(f"MODEL.PIXEL_STD values divide the pixels and must not be 0; got {std}")


def _check_datasets(cfg: CfgNode, key: str, *, allow_empty: bool) -> None:
    """The names of ``key`` against detectron2's catalog and the names ``DATASETS.COCO_REGISTER``
    (``--register``) registers when the run starts (a malformed entry is its to refuse)."""
    from ..data import check_dataset_names

    names = config_value(cfg, key)
    if isinstance(names, str):  # detectron2 takes one name as a string too
        names = [names]
    if not names and not allow_empty:
        raise ConfigError(
            f"{key} is empty: name the dataset(s) to train on (--register NAME JSON IMAGE_ROOT "
            "registers a COCO-format set)"
        )
    later = [
        entry[0]
        for entry in cfg.DATASETS.get("COCO_REGISTER", []) or []
        if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str)
    ]
    check_dataset_names(names, key, registered_later=later)


def _check_steps(steps: Any, max_iter: int) -> None:
    """detectron2 drops the steps beyond MAX_ITER (with a warning); fvcore's scheduler refuses
    the rest unless they increase strictly within 1 .. MAX_ITER - 1 (a step at MAX_ITER too)."""
    if not isinstance(steps, (list, tuple)) or not all(_is_int(s) for s in steps):
        raise ConfigError(f"SOLVER.STEPS must be a list of iterations (integers); got {steps!r}")
    kept = [s for s in steps if s <= max_iter]
    bad = [s for s in kept if not 0 < s < max_iter]
    rising = all(a < b for a, b in zip(kept, kept[1:]))
    if bad or not rising:
        raise ConfigError(
            f"SOLVER.STEPS must be strictly increasing iterations above 0 and below "
            f"SOLVER.MAX_ITER ({max_iter}) (steps after MAX_ITER are ignored); got {list(steps)}"
        )
