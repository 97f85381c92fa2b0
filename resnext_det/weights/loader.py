"""Load what :func:`~resnext_det.weights.reader.read_weights` read into a model, exactly.

:func:`load_pretrained` (and :class:`~resnext_det.weights.checkpointer.ResNeXtCheckpointer`) place
the ResNet by exact names under the model's bottom-up prefix, never by detectron2's
suffix-matching heuristics, stop on a checkpoint of another architecture, and report what matched
as detectron2's table.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from tabulate import tabulate
from torch import nn

from ..blocks import to_grouped_state_dict
from . import detectron2
from .reader import FORMATS, LAYOUTS, Weights, read_weights
from .records import Architecture, Conventions, infer_architecture

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "Architecture",
    "ArchitectureMismatchError",
    "LoadReport",
    "Weights",
    "infer_architecture",
    "load_pretrained",
    "plan_load",
    "read_weights",
]

logger = logging.getLogger(__name__)

# Model keys that are derived from the config, not learned (detectron2 ignores them too).
_NOT_LEARNED = re.compile(r"(^|\.)(pixel_mean|pixel_std)$|anchor_generator\.cell_anchors")


class ArchitectureMismatchError(ValueError):
    """The file holds a ResNet/ResNeXt of another depth, cardinality or width than the model."""


@dataclass
class LoadReport:
    """What loading a checkpoint into a model did; ``str()`` gives detectron2's matched table."""

    path: str
    layout: str
    architecture: Architecture | None
    conventions: Conventions
    matched: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the file, its layout and conventions, and how many tensors were loaded,
        missing, unexpected, mismatched (the console's; :meth:`table` is the log file's)."""
        counts = [f"{len(self.matched)} tensors loaded"]
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.shape_mismatched),
            ("dropped", self.dropped),
        ):
            if keys:
                counts.append(f"{len(keys)} {label}")
        return (
            f"Loaded '{self.path}' ({self.layout} layout, "
            f"{self.architecture.name if self.architecture else 'no ResNet'}; "
            f"{self.conventions.source or 'conventions unknown'}): {', '.join(counts)}"
        )

    def table(self) -> str:
        """The matched weights grouped by module, as detectron2's ``align_and_update_state_dicts``
        logs them, followed by what was not loaded."""
        # detectron2's grouping and prefix helpers, so the table reads like its own; the
        # checkpoint-side names are grouped by dotted components (_group_names) because
        # detectron2's character-level _group_str cuts torchvision names mid-word.
        from detectron2.checkpoint.c2_model_loading import (
            _group_keys_by_module,
            _longest_common_prefix,
        )

        lines = [
            f"Loaded '{self.path}' ({self.layout} layout, "
            f"{self.architecture.name if self.architecture else 'no ResNet'}; "
            f"{self.conventions.source or 'conventions unknown'})"
        ]
        if self.matched:
            names = [m[0] for m in self.matched]
            original = {m[0]: m[1] for m in self.matched}
            shapes = {m[0]: m[2] for m in self.matched}
            prefix = _longest_common_prefix(names)
            groups = _group_keys_by_module(names, original)
            rows, seen = [], set()
            for name in names:
                if name in seen:
                    continue
                if name in groups:
                    group = groups[name]
                    seen |= set(group)
                    rows.append(
                        (
                            _longest_common_prefix([k[len(prefix) :] for k in group]) + "*",
                            _group_names([original[k] for k in group]),
                            " ".join(str(shapes[k]).replace(" ", "") for k in group),
                        )
                    )
                else:
                    rows.append((name[len(prefix) :], original[name], str(shapes[name])))
            where = f"submodule {prefix[:-1]}" if prefix else "model"
            lines.append(f"Following weights matched with {where}:")
            lines.append(
                tabulate(
                    rows,
                    tablefmt="pipe",
                    headers=["Names in Model", "Names in Checkpoint", "Shapes"],
                )
            )
        for title, keys in (
            ("Missing in the checkpoint (left as initialised)", self.missing),
            ("Unexpected in the checkpoint (not loaded)", self.unexpected),
            ("Dropped on purpose (classifier head, BN step counters)", self.dropped),
        ):
            if keys:
                lines.append(f"{title}: {len(keys)}: {_summarise(keys)}")
        for key, got, want in self.shape_mismatched:
            lines.append(f"Shape mismatch: {key}: checkpoint {got} vs model {want}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _group_names(names: list[str]) -> str:
    """``["layer1.0.bn1.weight", "layer1.0.bn1.bias"]`` -> ``"layer1.0.bn1.{weight,bias}"``."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    head = ".".join(parts[0][:common])
    rest = ",".join(".".join(p[common:]) for p in parts)
    return f"{head}.{{{rest}}}" if head else f"{{{rest}}}"


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _model_resnet_name(model: nn.Module, prefix: str, grouped: Mapping[str, torch.Tensor]) -> str:
    try:
        module = model.get_submodule(prefix[:-1]) if prefix else model
        spec = getattr(module, "spec", None)
        if spec is not None:
            return spec.name
    except AttributeError:
        pass
    rel = {k[len(prefix) :]: v for k, v in grouped.items() if k.startswith(prefix)}
    arch = infer_architecture(rel)
    return arch.name if arch else "unknown"


def plan_load(
    model: nn.Module, weights: Weights, strict: bool = False
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Place ``weights`` under ``model``'s names and check every shape; loads nothing.

    Returns:
        ``(state_dict, report)``: what to pass to ``model.load_state_dict(..., strict=False)``
        (grouped-layout names; path-form blocks split them in their load hook) and the report.

    Raises:
        ArchitectureMismatchError: the file's ResNet differs from the model's (other depth, C or
            d): names the first differing key, both shapes and both architectures.
        ValueError: with ``strict``, keys of the covered part missing or unexpected.
    """
    model_sd = to_grouped_state_dict(model.state_dict())
    model_shapes = {k: tuple(v.shape) for k, v in model_sd.items()}
    prefix = detectron2.bottom_up_prefix(list(model_shapes), f"the model ({type(model).__name__})")
    c4_res5 = (
        "roi_heads.res5." if any(k.startswith("roi_heads.res5.") for k in model_shapes) else None
    )

    def target_of(rel: str) -> str:
        key = prefix + rel
        if c4_res5 and rel.startswith("res5.") and key not in model_shapes:
            return "roi_heads." + rel
        return key

    placed: dict[str, tuple[str, torch.Tensor]] = {}  # model key -> (file key, tensor)
    report = LoadReport(weights.path, weights.layout, weights.architecture, weights.conventions)
    for rel, tensor in weights.resnet.items():
        placed[target_of(rel)] = (weights.mapping.get(rel, rel), tensor)
    for key, tensor in weights.other.items():
        target = detectron2.map_prefix(key, weights.file_prefix, prefix)
        if target is None:
            report.unexpected.append(key)
        else:
            placed[target] = (key, tensor)

    def in_resnet(key: str) -> bool:
        """Whether a model key belongs to the ResNet's stem or stages (not its classifier)."""
        if c4_res5 is not None and key.startswith(c4_res5):
            return True
        return (
            key.startswith(prefix)
            and re.match(r"(stem|res[2-5])\.", key[len(prefix) :]) is not None
        )

    model_stages = {
        m[1] for k in model_shapes if in_resnet(k) if (m := re.search(r"(stem|res[2-5])\.", k))
    }
    state: dict[str, torch.Tensor] = {}
    arch_problems: list[str] = []
    file_name = weights.architecture.name if weights.architecture else "no ResNet"
    for key, (file_key, tensor) in placed.items():
        shape = tuple(tensor.shape)
        if key in model_shapes:
            if shape != model_shapes[key]:
                report.shape_mismatched.append((key, shape, model_shapes[key]))
                if in_resnet(key):
                    arch_problems.append(
                        f"'{key}' (checkpoint '{file_key}') has shape {shape} in the checkpoint "
                        f"but {model_shapes[key]} in the model"
                    )
                continue
            report.matched.append((key, file_key, shape))
            state[key] = tensor
        elif key.endswith("num_batches_tracked") or key.startswith(prefix + "linear."):
            report.dropped.append(file_key)
        else:
            report.unexpected.append(file_key)
            stage = re.search(r"(stem|res[2-5])\.", key)
            if in_resnet(key) and stage and stage[1] in model_stages:
                arch_problems.append(
                    f"checkpoint key '{file_key}' has no place in the model (no '{key}')"
                )
    # The offset convs of deformable stages (detectron2's conv2_offset) are new layers that start
    # at zero: a file without any (ImageNet weights, a plain detector) leaves them as they are.
    file_has_offsets = any(".conv2_offset." in k for k in placed)

    def new_offset_conv(key: str) -> bool:
        return not file_has_offsets and ".conv2_offset." in key

    for key in model_shapes:
        if key in placed or _NOT_LEARNED.search(key) or key.endswith("num_batches_tracked"):
            continue
        report.missing.append(key)
        if in_resnet(key) and weights.resnet and not new_offset_conv(key):
            arch_problems.append(f"model key '{key}' {model_shapes[key]} is not in the checkpoint")
    if arch_problems:
        model_name = _model_resnet_name(model, prefix, model_sd)
        raise ArchitectureMismatchError(
            f"'{weights.path}' holds a {file_name} ResNet ({weights.layout} layout) but the model "
            f"is {model_name}: {arch_problems[0]}"
            + (
                f" (and {len(arch_problems) - 1} more differences)"
                if len(arch_problems) > 1
                else ""
            )
            + ". Set MODEL.RESNETS.DEPTH/NUM_GROUPS/WIDTH_PER_GROUP to the checkpoint's "
            "architecture or use weights of the model's."
        )
    if strict:
        # ImageNet weights cover the ResNet; a detector checkpoint covers the whole model.
        covered = [
            k for k in report.missing if (weights.other or in_resnet(k)) and not new_offset_conv(k)
        ]
        if covered or report.unexpected:
            raise ValueError(
                f"strict loading of '{weights.path}': {len(covered)} missing key(s) "
                f"({_summarise(covered, 4)}), {len(report.unexpected)} unexpected key(s) "
                f"({_summarise(report.unexpected, 4)})"
            )
    return state, report


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    format: str = "auto",
    strict: bool = False,
) -> LoadReport:
    """Load a checkpoint of any supported layout into a ResNeXt backbone or detector.

    The ResNet is placed by exact names under the model's bottom-up prefix (``backbone.bottom_up.``
    for FPN detectors, ``backbone.`` and ``roi_heads.res5.`` for C4, none for a bare ResNeXt), in
    the grouped layout; aggregated/concat blocks split the tensors while loading. Weights are taken
    as they are: configure the input to match them with
    :func:`~resnext_det.weights.configure_for_weights`.

    Args:
        model: e.g. a ``GeneralizedRCNN``, a ResNeXt-FPN backbone or a bare ``ResNeXt``.
        path: torch (``.pth``/``.pt``/``.bin``), safetensors or pickle file holding torchvision,
            timm, Caffe2 (Detectron) or detectron2 weights (layout read from the keys).
        format: "auto" or the layout to insist on ("torchvision", "timm", "caffe2", "detectron2").
        strict: also fail when a key of the part the file covers (the ResNet for ImageNet weights,
            the whole model for detector checkpoints) is missing, or a key is unexpected.

    Returns:
        a :class:`LoadReport` (matched, missing, unexpected, shape-mismatched, dropped keys); it
        prints as detectron2's matched-weights table, which is also logged.

    Raises:
        CheckpointError: unreadable file or unknown layout.
        ArchitectureMismatchError: the file's ResNet has another depth, C or d than the model's.
    """
    weights = read_weights(path, format)
    state, report = plan_load(model, weights, strict=strict)
    result = model.load_state_dict(state, strict=False)
    leftover = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if leftover:  # cannot happen: plan_load only passes keys the model has
        raise RuntimeError(f"load_state_dict did not use {leftover[:5]}")
    logger.info("%s", report.summary())
    logger.debug("%s", report.table())
    return report
