"""Read any supported checkpoint into one form, and load it into a model exactly.

:func:`read_weights` turns a file (any container, any layout) into :class:`Weights`: the ResNet's
tensors in detectron2's grouped layout relative to the bottom-up network, the rest of a detector's
tensors under their own names, the architecture inferred from the shapes and the input conventions.
:func:`load_pretrained` (and :class:`~resnext_det.weights.checkpointer.ResNeXtCheckpointer`) place
them in a model by exact names, never by detectron2's suffix-matching heuristics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from ..blocks import to_grouped_state_dict
from . import caffe2, detectron2, hub
from .io import CheckpointError, as_tensor, check_finite, is_tensor, read_checkpoint, read_sidecar
from .records import (
    PRESETS,
    Architecture,
    Conventions,
    Converted,
    conventions_from_metadata,
    infer_architecture,
)
from .torchvision import is_torchvision_layout, torchvision_to_detectron2

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "Architecture",
    "ArchitectureMismatchError",
    "Layout",
    "LoadReport",
    "Weights",
    "infer_architecture",
    "load_pretrained",
    "plan_load",
    "read_weights",
]

logger = logging.getLogger(__name__)

# Top-level entries that describe weights rather than being training state.
_METADATA = ("matching_heuristics", "resnext_det", "conventions")
# Model keys that are derived from the config, not learned (detectron2 ignores them too).
_NOT_LEARNED = re.compile(r"(^|\.)(pixel_mean|pixel_std)$|anchor_generator\.cell_anchors")


class ArchitectureMismatchError(ValueError):
    """The file holds a ResNet/ResNeXt of another depth, cardinality or width than the model."""


@dataclass
class Weights:
    """A checkpoint read into one form.

    Attributes:
        path: the file.
        container: "torch", "safetensors" or "pickle".
        layout: "torchvision" (also timm's plain ResNet/ResNeXt), "caffe2" or "detectron2".
        resnet: the ResNet's tensors, grouped layout, names relative to the bottom-up network.
        other: a detector's other tensors (FPN, heads) under the file's names.
        mapping: ResNet name -> name in the file.
        file_prefix: where the ResNet sat in a detectron2 file (``"backbone.bottom_up."``).
        architecture: inferred from the shapes.
        conventions: the input conventions the weights need.
        meta: non-tensor entries and metadata of the file.
        training_state: a training checkpoint's optimizer/scheduler/iteration (for resuming).
    """

    path: str
    container: str
    layout: str
    resnet: dict[str, torch.Tensor]
    other: dict[str, torch.Tensor]
    mapping: dict[str, str]
    file_prefix: str
    architecture: Architecture | None
    conventions: Conventions
    meta: dict[str, Any] = field(default_factory=dict)
    training_state: dict[str, Any] = field(default_factory=dict)


def _decode_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """safetensors metadata values are strings; decode the ones holding JSON."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, str) and v[:1] in "[{":
            with contextlib.suppress(ValueError, RecursionError):  # not JSON: keep the string
                v = json.loads(v)
        out[k] = v
    return out


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: how to recognise its keys, convert them, and the conventions its
    files need when they record none."""

    name: str
    detect: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[Mapping[str, torch.Tensor], str], Converted]
    conventions: Callable[[Converted, Mapping[str, Any]], Conventions]


_D2_UNRECORDED = Conventions(
    source="a detectron2 checkpoint without recorded conventions",
    undecided="detectron2 checkpoints do not store INPUT.FORMAT/PIXEL_MEAN/PIXEL_STD; they are "
    "those of the config the model was trained with",
)

# Tried in order; Caffe2 first (its blob names hold no dots, so nothing else matches them).
LAYOUTS: tuple[Layout, ...] = (
    Layout("caffe2", caffe2.is_caffe2_layout, caffe2.caffe2_to_detectron2, caffe2.conventions_of),
    Layout(
        "torchvision",  # also timm's plain ResNet/ResNeXt, which keep torchvision's names
        is_torchvision_layout,
        lambda tensors, where: torchvision_to_detectron2(tensors),
        lambda converted, meta: PRESETS["torchvision"],
    ),
    Layout(
        "detectron2",
        detectron2.is_detectron2_layout,
        detectron2.split_detectron2,
        lambda converted, meta: _D2_UNRECORDED,
    ),
)
FORMATS = ("auto", "timm", *(layout.name for layout in LAYOUTS))


def _unwrap(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, Any], dict[str, Any]]:
    """``(state, meta, training_state)`` of a file: the tensors' dict (under ``model``,
    ``state_dict`` or ``blobs``, or the file itself), its other entries, and those of them that
    are a training checkpoint's state (optimizer, scheduler, iteration, ...)."""
    meta: dict[str, Any] = {}
    training_state: dict[str, Any] = {}
    for wrapper in ("model", "state_dict", "blobs"):
        if isinstance(obj.get(wrapper), Mapping):
            for k, v in obj.items():
                if k == wrapper:
                    continue
                meta[k] = v
                if not k.startswith("__") and k not in _METADATA:
                    training_state[k] = v
            return obj[wrapper], meta, training_state
    return obj, meta, training_state


def _recorded_conventions(path: str, meta: Mapping[str, Any]) -> Conventions | None:
    """Conventions the file records: its sidecar's (when it matches the file), else its own."""
    record = meta.get("resnext_det") if isinstance(meta.get("resnext_det"), Mapping) else meta
    for source, found in ((f"sidecar '{path}.json'", read_sidecar(path)), (f"'{path}'", record)):
        if found and (conventions := conventions_from_metadata(found, source)) is not None:
            return conventions
    return None


def read_weights(path: str | os.PathLike, format: str = "auto") -> Weights:
    """Read ``path`` (any container and layout, or a weights name) into a :class:`Weights`.

    Args:
        path: the checkpoint, a name (``torchvision://resnext50_32x4d.IMAGENET1K_V1``,
            ``timm://NAME``), an ``http(s)://`` URL (fetched into torch's hub cache and verified,
            see :mod:`~resnext_det.weights.hub`) or another iopath URL (``detectron2://``).
        format: "auto" (decide from the keys) or one of "torchvision", "timm", "caffe2",
            "detectron2" to insist on a layout.

    Raises:
        CheckpointError: unreadable file, keys of no supported layout, NaN/Inf weights, or
            conventions that do not parse or contradict the name's.
        ValueError: keys of a torchvision/timm variant of another architecture (names it).
        WeightsUnavailableError: a name or URL that cannot be fetched.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    named = hub.resolve_name(path)
    path = hub.fetch(named) if named else hub.resolve_weights_path(path)
    where = f"'{path}'"
    obj, container = read_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where} holds a {type(obj).__name__}; expected a state_dict or a dict holding one "
            f"under 'model' or 'state_dict' (a whole pickled nn.Module is not supported: save its "
            f"state_dict())"
        )
    state, meta, training_state = _unwrap(obj)
    meta = _decode_metadata(meta.pop("__metadata__", {})) | meta
    meta.update({k: v for k, v in state.items() if not is_tensor(v)})
    tensors = {k: as_tensor(k, v, where) for k, v in state.items() if is_tensor(v)}
    if not tensors:
        raise CheckpointError(f"{where} holds no tensors (top-level keys: {sorted(obj)[:10]})")
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    check_finite(tensors, where)

    wanted = "torchvision" if format == "timm" else format
    layout = next(
        (x for x in LAYOUTS if x.name == wanted or (wanted == "auto" and x.detect(tensors))), None
    )
    if layout is None:
        raise CheckpointError(
            f"cannot tell the layout of {where} from its keys (e.g. {sorted(tensors)[:6]}): "
            f"expected torchvision/timm (conv1.weight, layer1.0.conv1.weight), Caffe2 "
            f"(conv1_w, res2_0_branch2a_w) or detectron2 (stem.conv1.weight, "
            f"res2.0.conv1.weight, possibly under backbone.bottom_up.)"
        )
    try:
        converted = layout.convert(tensors, where)
    except CheckpointError:
        raise
    except ValueError as exc:
        raise ValueError(f"{where} ({layout.name} layout): {exc}") from exc

    conventions = _recorded_conventions(path, meta)
    if named is not None and named.conventions is not None:
        if conventions is not None and conventions.cfg_values() != named.conventions.cfg_values():
            raise CheckpointError(
                f"{where} records {conventions.cfg_values()} ({conventions.source}), but "
                f"{named.name} is {named.conventions.source}: the file is not what the name says"
            )
        conventions = named.conventions
    if conventions is None:
        conventions = layout.conventions(converted, meta)
    return Weights(
        path,
        container,
        layout.name,
        converted.resnet,
        converted.other,
        converted.mapping,
        converted.file_prefix,
        infer_architecture(converted.resnet),
        conventions,
        meta,
        training_state,
    )


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
    for key in model_shapes:
        if key in placed or _NOT_LEARNED.search(key) or key.endswith("num_batches_tracked"):
            continue
        report.missing.append(key)
        if in_resnet(key) and weights.resnet:
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
        covered = [k for k in report.missing if weights.other or in_resnet(k)]
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
    logger.info("%s", report.table())
    return report
