"""torchvision (and timm) ResNet/ResNeXt key layout <-> detectron2's grouped layout.

timm's plain ``resnet*``/``resnext*`` models keep torchvision's parameter names on purpose, so one
mapping serves both. Both converters are pure (no file I/O, no model): they rename keys and never
touch a tensor's values, so features computed from the converted weights are bit-identical.

torchvision                            detectron2 (bottom-up, grouped block form)
``conv1.weight``                       ``stem.conv1.weight``
``bn1.*``                              ``stem.conv1.norm.*``
``layer{s}.{b}.conv{k}.weight``        ``res{s+1}.{b}.conv{k}.weight``
``layer{s}.{b}.bn{k}.*``               ``res{s+1}.{b}.conv{k}.norm.*``
``layer{s}.{b}.downsample.0.weight``   ``res{s+1}.{b}.shortcut.weight``
``layer{s}.{b}.downsample.1.*``        ``res{s+1}.{b}.shortcut.norm.*``
``fc.{weight,bias}``                   ``linear.{weight,bias}``
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .records import Converted

__all__ = [
    "detectron2_to_torchvision",
    "is_torchvision_layout",
    "torchvision_to_detectron2",
    "unsupported_variant",
]

_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# The layout, one row per parameter group: (torchvision name, detectron2 name). {s} is the stage
# (torchvision's layer{s} is detectron2's res{s+1}; _rename shifts it), {b} the block, {k} the conv,
# {field} a norm field, {fc} the head's weight or bias. Both directions are compiled from it.
_LAYOUT: list[tuple[str, str]] = [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.{field}", "stem.conv1.norm.{field}"),
    ("layer{s}.{b}.conv{k}.weight", "res{s}.{b}.conv{k}.weight"),
    ("layer{s}.{b}.bn{k}.{field}", "res{s}.{b}.conv{k}.norm.{field}"),
    ("layer{s}.{b}.downsample.0.weight", "res{s}.{b}.shortcut.weight"),
    ("layer{s}.{b}.downsample.1.{field}", "res{s}.{b}.shortcut.norm.{field}"),
    ("fc.{fc}", "linear.{fc}"),
]


def _compile(template: str, stages: str) -> re.Pattern[str]:
    """``layer{s}.{b}.bn{k}.{field}`` -> an anchored regex with one named group per field."""
    groups = {"s": stages, "b": r"\d+", "k": "[123]", "field": "|".join(_NORM_FIELDS),
              "fc": "weight|bias"}  # fmt: skip
    parts = re.split(r"\{(\w+)\}", template)
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{groups[p]})"
                   for i, p in enumerate(parts))  # fmt: skip
    return re.compile(f"^{body}$")


# (pattern of source names, template of target names); the first match wins.
_TV_TO_D2 = [(_compile(tv, "[1-4]"), d2) for tv, d2 in _LAYOUT]
_D2_TO_TV = [(_compile(d2, "[2-5]"), tv) for tv, d2 in _LAYOUT]

# Key patterns of timm/torchvision models that share the torchvision names but not the architecture,
# and the words that say which. Loading them by name would silently build a different network.
_VARIANTS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"^conv1\.\d+\."),
        "a deep 3-conv stem (timm's '*c'/'*d'/'*s' variants, e.g. "
        "resnet50d, resnext50d_32x4d: keys conv1.0/conv1.1/...)",
    ),
    (
        re.compile(r"\.downsample\.2\."),
        "an avg-down shortcut (timm's '*d' variants: AvgPool, then "
        "the conv in downsample.1 and the norm in downsample.2)",
    ),
    (
        re.compile(r"\.(se|attn|eca)\."),
        "squeeze-excitation/attention modules (timm's se*/eca*/attention variants)",
    ),
    (
        re.compile(r"\.conv2\.(conv|fc1|bn0|attn)\b"),
        "split-attention/selective-kernel 3x3 convs (timm's resnest*/skresnet*)",
    ),
    (re.compile(r"\.(aa|drop_block|blur)\."), "anti-aliased or blur-pool blocks"),
]


def _rename(
    state_dict: Mapping[str, torch.Tensor],
    rules: list[tuple[re.Pattern[str], str]],
    shift: int,
    source: str,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    new: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}
    unmapped = []
    for key, value in state_dict.items():
        for pattern, template in rules:
            m = pattern.match(key)
            if m is None:
                continue
            groups = m.groupdict()
            if "s" in groups:
                groups["s"] = str(int(groups["s"]) + shift)
            new_key = template.format(**groups)
            break
        else:
            unmapped.append(key)
            continue
        if new_key in new:  # cannot happen with the rules above; guards future edits
            raise ValueError(f"keys '{mapping[new_key]}' and '{key}' both map to '{new_key}'")
        new[new_key] = value
        mapping[new_key] = key
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} key(s) are not in the {source} ResNet/ResNeXt layout, e.g. "
            f"{unmapped[:5]}"
        )
    # The check detectron2's c2_model_loading makes: renaming lost or merged nothing.
    if len(new) != len(state_dict):
        raise ValueError(f"renaming {len(state_dict)} {source} keys gave {len(new)} keys")
    return new, mapping


def unsupported_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Say which other architecture a torchvision/timm-named state_dict holds, or None.

    Detects timm's ResNet variants that reuse torchvision's names (deep stem, avg-down shortcut,
    SE/attention, split attention) and torchvision's BasicBlock ResNets (18/34), none of which the
    bottleneck ResNeXt here can reproduce.
    """
    found = []
    for pattern, description in _VARIANTS:
        hit = next((k for k in state_dict if pattern.search(k)), None)
        if hit is not None:
            found.append(f"{description} (e.g. '{hit}')")
    if "layer1.0.conv2.weight" in state_dict and "layer1.0.conv3.weight" not in state_dict:
        found.append("BasicBlock residual blocks (ResNet-18/34: two 3x3 convs, no conv3)")
    return "; ".join(found) or None


def is_torchvision_layout(state_dict: Mapping[str, object]) -> bool:
    """Whether the keys look like torchvision/timm's ResNet (``conv1`` + ``layer1.*``)."""
    return any(k.startswith("layer1.") for k in state_dict) and any(
        k.startswith("conv1.") for k in state_dict
    )


def torchvision_to_detectron2(state_dict: Mapping[str, torch.Tensor]) -> Converted:
    """Rename a torchvision/timm ResNet or ResNeXt state_dict into detectron2's bottom-up names.

    Args:
        state_dict: e.g. ``torchvision.models.resnext50_32x4d().state_dict()`` or timm's
            ``resnext101_32x8d``. ``num_batches_tracked`` and the ``fc`` head are kept (as
            ``...norm.num_batches_tracked`` and ``linear.*``); the loader drops what the model
            lacks.

    Returns:
        the same tensors under detectron2's grouped-layout names (``stem.*``, ``res2``..``res5``,
        ``linear.*``) as ``resnet``, and new name -> original name as ``mapping``.

    Raises:
        ValueError: the keys belong to another architecture (timm's deep-stem / avg-down / SE
            variants, BasicBlock ResNets), naming it, or to no ResNet at all.
    """
    variant = unsupported_variant(state_dict)
    if variant is not None:
        raise ValueError(
            f"the checkpoint uses torchvision/timm names but holds another architecture: "
            f"{variant}. resnext_det builds the plain ResNet/ResNeXt (7x7 stem, strided 1x1 "
            f"conv shortcut), so these weights cannot be loaded into it"
        )
    return Converted(*_rename(state_dict, _TV_TO_D2, shift=1, source="torchvision/timm"))


def detectron2_to_torchvision(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`torchvision_to_detectron2`: a backbone state_dict in torchvision names.

    Accepts any block form (path-form keys are merged into the grouped layout first, with
    :func:`resnext_det.to_grouped_state_dict`). The result loads with ``strict=True`` into
    ``torchvision.models.resnext50_32x4d()`` (or timm's ``resnext50_32x4d``) of the same
    architecture; a missing ``linear`` head simply leaves ``fc`` out, and BatchNorm fills in a
    missing ``num_batches_tracked`` itself.

    Args:
        state_dict: keys relative to the bottom-up ResNet (``stem.*``, ``res2``..``res5``,
            optionally ``linear.*``); strip ``backbone.bottom_up.`` / ``backbone.`` first.

    Raises:
        ValueError: a key that is not part of the bottom-up ResNet (FPN, heads, ...).
    """
    from ..blocks import to_grouped_state_dict

    grouped = to_grouped_state_dict(dict(state_dict))
    new, _ = _rename(grouped, _D2_TO_TV, shift=-1, source="detectron2 bottom-up")
    return new
