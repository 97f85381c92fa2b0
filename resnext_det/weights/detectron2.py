"""detectron2 checkpoints (full detectors, bare backbones, the project's own exports).

Their keys are already detectron2's; what differs between files is where the ResNet sits (the
*bottom-up prefix*: ``backbone.bottom_up.`` in FPN detectors, ``backbone.`` in C4 detectors, whose
res5 lives in ``roi_heads.res5``, ``bottom_up.`` in a bare FPN backbone, nothing in a bare ResNet)
and the block form (path-form keys are merged into the grouped layout here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..blocks import to_grouped_state_dict
from .records import Converted

__all__ = [
    "RESNET_KEY",
    "bottom_up_prefix",
    "is_detectron2_layout",
    "map_prefix",
    "split_detectron2",
]

_STEM = "stem.conv1.weight"
# A bottom-up ResNet's own names (stem, stages, ImageNet classifier), relative to its prefix.
RESNET_KEY = re.compile(r"^(stem\.|res[2-5]\.\d+\.|linear\.)")
_C4_RES5 = "roi_heads.res5."


def is_detectron2_layout(state_dict: Mapping[str, object]) -> bool:
    """Whether some key is a detectron2 ResNet stem (``[<prefix>]stem.conv1.weight``)."""
    return any(k == _STEM or k.endswith("." + _STEM) for k in state_dict)


def bottom_up_prefix(keys: Mapping[str, object] | list[str], what: str) -> str:
    """The prefix of the ResNet inside a detectron2 state_dict (``""``, ``"backbone.bottom_up."``).

    Raises:
        ValueError: no ResNet stem, or more than one (``what`` names the file or model).
    """
    stems = [k[: -len(_STEM)] for k in keys if k == _STEM or k.endswith("." + _STEM)]
    if not stems:
        raise ValueError(
            f"{what} has no detectron2 ResNet stem ('stem.conv1.weight' under some prefix such "
            f"as 'backbone.bottom_up.'): it is not a ResNet/ResNeXt backbone or detector"
        )
    if len(stems) > 1:
        raise ValueError(
            f"{what} has {len(stems)} ResNet stems ({stems}); cannot tell which to use"
        )
    return stems[0]


def split_detectron2(state_dict: Mapping[str, torch.Tensor], what: str) -> Converted:
    """Split a detectron2 state_dict into its ResNet (bottom-up-relative, grouped) and the rest.

    Returns:
        ``resnet`` keyed ``stem.*``/``res2..5.*``/``linear.*`` (a C4 detector's
        ``roi_heads.res5.*`` included as ``res5.*``), ``other`` under the file's full names (FPN,
        RPN, ROI heads), relative name -> file name for the ResNet, and the file's bottom-up
        prefix.
    """
    grouped = to_grouped_state_dict(dict(state_dict))
    if len(grouped) > len(state_dict):
        raise ValueError(f"merging block paths of {what} created keys; the file is inconsistent")
    prefix = bottom_up_prefix(grouped, what)
    resnet: dict[str, torch.Tensor] = {}
    other: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}
    for key, value in grouped.items():
        rel = None
        if key.startswith(prefix) and RESNET_KEY.match(key[len(prefix) :]):
            rel = key[len(prefix) :]
        elif key.startswith(_C4_RES5) and prefix == "backbone.":
            rel = key[len("roi_heads.") :]
        if rel is None:
            other[key] = value
        elif rel in resnet:
            raise ValueError(f"{what}: '{mapping[rel]}' and '{key}' are both the ResNet's '{rel}'")
        else:
            resnet[rel] = value
            mapping[rel] = key
    return Converted(resnet, mapping, other, prefix)


def map_prefix(key: str, file_prefix: str, model_prefix: str) -> str | None:
    """Where a non-ResNet key of a detectron2 file goes in a model, or None when it has no place.

    The bottom-up prefixes are split into ``A + S`` (file) and ``B + S`` (model) with ``S`` their
    longest common dotted suffix; a key under ``A`` moves under ``B``. E.g. file
    ``backbone.bottom_up.`` and bare FPN model ``bottom_up.`` give ``backbone.fpn_lateral2.weight``
    -> ``fpn_lateral2.weight``; a detector's heads have no place in a bare backbone.
    """
    f_parts = file_prefix.split(".")[:-1]
    m_parts = model_prefix.split(".")[:-1]
    common = 0
    while (
        common < min(len(f_parts), len(m_parts))
        and f_parts[len(f_parts) - 1 - common] == m_parts[len(m_parts) - 1 - common]
    ):
        common += 1
    a = "".join(p + "." for p in f_parts[: len(f_parts) - common])
    b = "".join(p + "." for p in m_parts[: len(m_parts) - common])
    if not key.startswith(a):
        return None
    return b + key[len(a) :]
