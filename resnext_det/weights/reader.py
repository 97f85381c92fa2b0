"""Read any supported checkpoint (any container, any layout, or a weights name) into one form.

:func:`read_weights` turns a file into :class:`Weights`: the ResNet's tensors in detectron2's
grouped layout relative to the bottom-up network, the rest of a detector's tensors under their own
names, the architecture inferred from the shapes and the input conventions. Reading a file is a
loop over :data:`LAYOUTS` (recognise the keys, convert them, default conventions), never a branch
on the file's name.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

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
    "Layout",
    "Weights",
    "classes_in",
    "read_weights",
    "recorded_classes",
]

# Top-level entries that describe weights rather than being training state.
_METADATA = ("matching_heuristics", "resnext_det", "conventions")


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
FORMATS = ("auto", *(layout.name for layout in LAYOUTS), "timm")


def _check_names(mapping: Mapping[Any, Any], where: str, under: str = "") -> None:
    """Refuse a key that is not a string (``{1: tensor}``): every name of a checkpoint is one."""
    for key in mapping:
        if not isinstance(key, str):
            inside = f" under '{under}'" if under else ""
            shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + "..."
            raise CheckpointError(
                f"{where}: key {shown}{inside} is of type {type(key).__name__}, not a string: a "
                f"checkpoint maps names (such as 'conv1.weight') to tensors"
            )


def _unwrap(
    obj: Mapping[str, Any], where: str
) -> tuple[Mapping[str, Any], dict[str, Any], dict[str, Any]]:
    """``(state, meta, training_state)`` of a file: the tensors' dict (under ``model``,
    ``state_dict`` or ``blobs``, or the file itself), its other entries, and those of them that
    are a training checkpoint's state (optimizer, scheduler, iteration, ...).

    Raises:
        CheckpointError: a key of the file or of the tensors' dict that is not a string (names
            ``where`` and the key).
    """
    _check_names(obj, where)
    meta: dict[str, Any] = {}
    training_state: dict[str, Any] = {}
    for wrapper in ("model", "state_dict", "blobs"):
        if isinstance(obj.get(wrapper), Mapping):
            _check_names(obj[wrapper], where, wrapper)
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


def recorded_classes(path: str | os.PathLike) -> dict[str, Any]:
    """The class names weights ``path`` (a file or a name) were trained to predict:
    ``{"thing_classes": [...], "thing_dataset_ids": [...]}`` as the trainer records them
    (:func:`~resnext_det.weights.checkpointer.dataset_classes`), from the export sidecar or the
    file's ``resnext_det`` record; ``{}`` when the file records none."""
    local = hub.resolve_weights_path(path)
    obj, _ = read_checkpoint(local)
    if not isinstance(obj, Mapping):
        return {}
    _, meta, _ = _unwrap(obj, f"'{local}'")
    meta = _decode_metadata(meta.pop("__metadata__", {})) | meta
    return classes_in(read_sidecar(local)) or classes_in(meta)


def classes_in(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The class record (see :func:`recorded_classes`) in a file's metadata or sidecar, or {}."""
    record = meta.get("resnext_det") if isinstance(meta.get("resnext_det"), Mapping) else meta
    classes = record.get("thing_classes")
    if not isinstance(classes, list) or not classes:
        return {}
    out: dict[str, Any] = {"thing_classes": [str(c) for c in classes]}
    ids = record.get("thing_dataset_ids")
    if isinstance(ids, list) and len(ids) == len(classes):
        out["thing_dataset_ids"] = [int(i) for i in ids]
    return out


def _agree(a: Conventions, b: Conventions) -> bool:
    """Whether two records ask for the same values where both give one (pixel statistics to
    1e-3)."""
    va, vb = a.cfg_values(), b.cfg_values()
    return all(
        all(abs(x - y) <= 1e-3 for x, y in zip(va[k], vb[k])) if isinstance(va[k], list) else
        va[k] == vb[k]
        for k in va.keys() & vb.keys()
    )  # fmt: skip


def read_weights(path: str | os.PathLike, format: str = "auto") -> Weights:
    """Read ``path`` (any container and layout, or a weights name) into a :class:`Weights`.

    Args:
        path: the checkpoint, a name (``torchvision://resnext50_32x4d.IMAGENET1K_V1``,
            ``timm://NAME``), an ``http(s)://`` URL (fetched into torch's hub cache and verified,
            see :mod:`~resnext_det.weights.hub`) or another iopath URL (``detectron2://``).
        format: "auto" (decide from the keys) or one of "torchvision", "timm", "caffe2",
            "detectron2" to insist on a layout.

    Raises:
        CheckpointError: unreadable file, a key that is not a string, keys of no supported
            layout (or not of the layout ``format`` insists on), NaN/Inf weights, a tensor whose
            shape does not fit the architecture the others describe, or conventions that do not
            parse or contradict the name's.
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
    state, meta, training_state = _unwrap(obj, where)
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
    if not layout.detect(tensors):  # a forced layout the keys are not: it would find no ResNet
        looks = next((x.name for x in LAYOUTS if x.detect(tensors)), None)
        hint = (
            f"they look like {looks}'s: use format 'auto' (--format auto) or '{looks}'"
            if looks
            else "they are of no layout resnext_det reads"
        )
        raise CheckpointError(
            f"{where} was to be read as {format} (--format {format}), but its keys are not "
            f"{layout.name}'s (e.g. {sorted(tensors)[:6]}): {hint}"
        )
    try:
        converted = layout.convert(tensors, where)
    except CheckpointError:
        raise
    except ValueError as exc:
        raise ValueError(f"{where} ({layout.name} layout): {exc}") from exc
    # Before the conventions: Caffe2's are decided from the architecture, whose shapes this checks.
    architecture = infer_architecture(converted.resnet, where=where, mapping=converted.mapping)

    conventions = _recorded_conventions(path, meta)
    if named is not None and named.conventions is not None:
        if conventions is not None and not _agree(conventions, named.conventions):
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
        architecture,
        conventions,
        meta,
        training_state,
    )
