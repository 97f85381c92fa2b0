"""Pretrained weights: read every checkpoint layout users have, safely, with their conventions.

* :func:`load_pretrained` loads torchvision, timm, Caffe2 (Detectron ``.pkl``) and detectron2
  checkpoints into a ResNeXt backbone or detector by exact names, and reports what matched.
* :func:`configure_for_weights` sets ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD`` and
  ``MODEL.RESNETS.STRIDE_IN_1X1`` to what the weights need.
* :class:`ResNeXtCheckpointer` is detectron2's ``DetectionCheckpointer`` reading all of them, so
  ``MODEL.WEIGHTS`` and ``--resume`` accept any of these files.
* :func:`torchvision_to_detectron2` / :func:`detectron2_to_torchvision` are the pure key converters.

Files are read without running code from them (``torch.load(weights_only=True)``, a pickle reader
that builds only numpy arrays), and the layout is decided from the keys, never the file name.
"""

from __future__ import annotations

from .checkpointer import ResNeXtCheckpointer, convert_checkpoint
from .conventions import PRESETS, Conventions, configure_for_weights, explicit_keys
from .io import CheckpointError
from .loader import (
    Architecture,
    ArchitectureMismatchError,
    LoadReport,
    Weights,
    load_pretrained,
    read_weights,
)
from .torchvision import detectron2_to_torchvision, torchvision_to_detectron2

__all__ = [
    "PRESETS",
    "Architecture",
    "ArchitectureMismatchError",
    "CheckpointError",
    "Conventions",
    "LoadReport",
    "ResNeXtCheckpointer",
    "Weights",
    "configure_for_weights",
    "convert_checkpoint",
    "detectron2_to_torchvision",
    "explicit_keys",
    "load_pretrained",
    "read_weights",
    "torchvision_to_detectron2",
]
