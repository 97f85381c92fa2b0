"""Pretrained weights: read every checkpoint layout users have, safely, with their conventions.

* :func:`load_pretrained` loads torchvision, timm, Caffe2 (Detectron ``.pkl``) and detectron2
  checkpoints into a ResNeXt backbone or detector by exact names, and reports what matched.
* Names (``torchvision://resnext50_32x4d.IMAGENET1K_V1``, ``timm://NAME``, ``https://`` URLs) are
  accepted wherever a path is: fetched once into torch's hub cache, verified, then read offline
  (:mod:`~resnext_det.weights.hub`).
* :func:`configure_for_weights` sets ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD`` and
  ``MODEL.RESNETS.STRIDE_IN_1X1`` to what the weights need.
* :class:`ResNeXtCheckpointer` is detectron2's ``DetectionCheckpointer`` reading all of them, so
  ``MODEL.WEIGHTS`` and ``--resume`` accept any of these files and names.
* :func:`torchvision_to_detectron2` / :func:`detectron2_to_torchvision` are the pure key converters.

Files are read without running code from them (``torch.load(weights_only=True)``, a pickle reader
that builds only numpy arrays of sizes the file can hold), the layout is decided from the keys,
never the file name, and NaN/Inf weights are refused (:func:`check_finite`).

Modules: ``records`` (pure facts: conventions, presets, architecture, the converters' record),
``io`` (containers, checks), one module per layout (``torchvision``, ``caffe2``, ``detectron2``),
``reader`` (a file into one form, a loop over the layouts), ``loader`` (placing it in a model),
``hub`` (names), ``conventions`` (editing a cfg), ``convert`` (writing converted files),
``checkpointer``.
"""

from __future__ import annotations

from .checkpointer import ResNeXtCheckpointer
from .conventions import configure_for_weights, explicit_keys
from .convert import Conversion, convert_checkpoint
from .hub import WeightsUnavailableError, resolve_weights_path
from .io import CheckpointError, check_finite
from .loader import ArchitectureMismatchError, LoadReport, load_pretrained
from .reader import FORMATS, Weights, read_weights
from .records import PRESETS, Architecture, Conventions
from .torchvision import detectron2_to_torchvision, torchvision_to_detectron2

__all__ = [
    "FORMATS",
    "PRESETS",
    "Architecture",
    "ArchitectureMismatchError",
    "CheckpointError",
    "Conventions",
    "Conversion",
    "LoadReport",
    "ResNeXtCheckpointer",
    "Weights",
    "WeightsUnavailableError",
    "check_finite",
    "configure_for_weights",
    "convert_checkpoint",
    "detectron2_to_torchvision",
    "explicit_keys",
    "load_pretrained",
    "read_weights",
    "resolve_weights_path",
    "torchvision_to_detectron2",
]
