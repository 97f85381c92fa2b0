"""Detectron's Caffe2 ``.pkl`` ImageNet weights -> detectron2's grouped layout.

Blob names (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ``res2_0_branch1_bn_b``, ...)
are renamed by detectron2's own ``convert_basic_c2_names``. Two kinds of files exist:

* Detectron's ImageNet files (``MSRA/R-50.pkl``, ``20171220/X-101-32x8d.pkl``,
  ``FBResNeXt/X-101-64x4d.pkl``, ``25093814/X-152-32x8d-IN5k.pkl``) hold BN *fused* into an affine
  scale ``_bn_s`` and bias ``_bn_b``; they were made for BGR input with PIXEL_STD (1, 1, 1).
* files that keep BN's running statistics (``_bn_rm``/``_bn_riv``, or ``_bn_running_mean``/
  ``_bn_running_var`` with ``_bn_gamma``/``_bn_beta``), such as detectron2's re-converted
  ``FAIR/X-101-32x8d.pkl``, which needs BGR with PIXEL_STD (57.375, 57.12, 58.395).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names

from .detectron2 import RESNET_KEY
from .io import as_tensor
from .records import Conventions, Converted, caffe2_conventions, infer_architecture

__all__ = ["FROZEN_BN_EPS", "caffe2_to_detectron2", "conventions_of", "is_caffe2_layout"]

# detectron2's FrozenBatchNorm2d (and torch's BatchNorm2d) default eps. A fused file's scale must
# be applied as it is: w / sqrt(running_var + eps) == w needs running_var = 1 - eps. detectron2's
# loader leaves running_var = 1 (its catalog notes the result "is still different from affine by
# an epsilon"); FrozenBatchNorm2d's own initial running_var is 1 - eps for the same reason.
FROZEN_BN_EPS = 1e-5

_C2_KEY = re.compile(r"^(conv1_w|res_conv1_(bn|gn)_|res\d+_\d+_branch)")
# Blobs that are not parameters: solver momentum buffers (as detectron2's loader drops them).
_NOT_PARAMS = re.compile(r"_momentum$")


def is_caffe2_layout(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are Caffe2 blob names of a ResNet (``conv1_w``, ``res2_0_branch2a_w``)."""
    return any(_C2_KEY.match(k) for k in state_dict)


def caffe2_to_detectron2(blobs: Mapping[str, Any], where: str = "the checkpoint") -> Converted:
    """Rename Caffe2 ResNet/ResNeXt blobs into detectron2's bottom-up names.

    Args:
        blobs: name -> numpy array or tensor (a detector file's ``"blobs"``); the ``_momentum``
            solver buffers are left out.
        where: the file, for messages.

    Returns:
        the backbone tensors in detectron2's grouped layout (``stem.*``, ``res2``..``res5``,
        ``linear.*`` for ``pred_*``/``fc1000_*``), new name -> blob name, and as ``other`` the
        blobs that are not part of the ResNet (a Detectron detector's heads) under their original
        names. A norm with only a fused scale and bias gets ``running_mean = 0`` and
        ``running_var = 1 - eps``, so FrozenBN applies them exactly.

    Raises:
        ValueError: renaming lost or merged keys (detectron2's loader asserts the same).
    """
    names = sorted(k for k in blobs if not _NOT_PARAMS.search(k))
    renamed = convert_basic_c2_names(names)
    # Detectron's ImageNet classifier is "pred" in most files and "fc1000" in some.
    renamed = [re.sub(r"^fc1000\.", "linear.", k) for k in renamed]
    if len(set(renamed)) != len(renamed) or len(renamed) != len(names):
        dup = sorted({k for k in renamed if renamed.count(k) > 1})
        raise ValueError(f"renaming Caffe2 blobs merged keys into {dup[:5]}")
    state_dict: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}
    other: dict[str, torch.Tensor] = {}
    for old, new in zip(names, renamed):
        if RESNET_KEY.match(new):
            state_dict[new] = as_tensor(old, blobs[old], where)
            mapping[new] = old
        else:
            other[old] = as_tensor(old, blobs[old], where)
    for key in [k for k in state_dict if k.endswith(".norm.weight")]:
        norm = key[: -len("weight")]
        if f"{norm}running_mean" in state_dict or "_gn_" in mapping[key]:
            continue  # BN with its statistics, or GroupNorm (which has none)
        scale = state_dict[key]
        state_dict[f"{norm}running_mean"] = torch.zeros_like(scale)
        state_dict[f"{norm}running_var"] = torch.full_like(scale, 1.0 - FROZEN_BN_EPS)
    return Converted(state_dict, mapping, other)


def conventions_of(converted: Converted, meta: Mapping[str, Any]) -> Conventions:
    """A Caffe2 file's conventions from its content: fused or kept BN statistics, GroupNorm, C,
    and ``__author__`` (see :func:`~resnext_det.weights.records.caffe2_conventions`)."""
    resnet, mapping = converted.resnet, converted.mapping
    author = meta.get("__author__")
    architecture = infer_architecture(resnet)
    return caffe2_conventions(
        # fused: the norms came as a scale and bias only (no running statistics in the file)
        fused=not any(
            k.endswith((".norm.running_mean", ".norm.running_var")) and k in mapping for k in resnet
        ),
        # GroupNorm: _gn_s/_gn_b (FAIR's R-50-GN, R-101-GN)
        group_norm=any("_gn_" in v for v in mapping.values()),
        cardinality=architecture.cardinality if architecture else 1,
        author=author if isinstance(author, str) else None,
    )
