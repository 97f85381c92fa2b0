"""Export the backbone of a trained detector to the formats other code reads.

A detector trained here is a detectron2 checkpoint; its backbone is worth reusing elsewhere: as a
torchvision or timm ResNeXt, as a detectron2 ``MODEL.WEIGHTS`` file for another detector, or as a
traced TorchScript / ONNX graph. Every export:

* builds the backbone from the config and loads the checkpoint into it first, so a config that does
  not match the checkpoint stops with the key and both shapes instead of producing a wrong file;
* comes from the grouped block form (:func:`resnext_det.to_grouped_state_dict`), whatever form the
  model was trained in: the grouped layout is detectron2's, torchvision's and timm's (after
  renaming), and the fastest to run;
* is written atomically (temporary file in the same folder, then ``os.replace``), with a metadata
  sidecar ``<out>.json`` (architecture, input convention, source checkpoint and its sha256, what
  is not in the file), written last, so that a sidecar always describes a complete export.

Formats (``FORMATS``): ``torchvision``, ``timm`` and ``detectron2`` are state dicts, stored in a
``torch`` (pickle) or ``safetensors`` container (``CONTAINERS``); ``torchscript`` and ``onnx`` are
traced graphs of the backbone (res2..res5, or p2..p6 with ``fpn=True``) that take any batch size and
image size (a multiple of the backbone's ``size_divisibility``), checked after writing against the
eager model on two image sizes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from .backbone import ARCHITECTURES, STAGE_NAMES, ResNeXtSpec, make_resnext
from .blocks import to_grouped_state_dict
from .config import load_config
from .io import staged_files
from .speed import fold_batchnorm, max_relative_error
from .version import __version__
from .weights.conventions import Conventions
from .weights.detectron2 import map_prefix
from .weights.io import SIDECAR_SHA256
from .weights.loader import Weights, plan_load, read_weights
from .weights.torchvision import detectron2_to_torchvision

__all__ = ["FORMATS", "CONTAINERS", "ExportResult", "export_backbone", "sha256_of"]

logger = logging.getLogger(__name__)

# Format -> what it is. State-dict formats go into a container; traced formats are their own file.
FORMATS: dict[str, str] = {
    "torchvision": "state dict for torchvision.models.ResNet (layer1..layer4)",
    "timm": "state dict for timm.models.resnet.ResNet (same key names as torchvision)",
    "detectron2": "detectron2 checkpoint of the backbone alone, for MODEL.WEIGHTS",
    "torchscript": "traced TorchScript module: images -> tuple of feature maps",
    "onnx": "ONNX graph: images -> feature maps, dynamic batch size and image size",
}
STATE_DICT_FORMATS = ("torchvision", "timm", "detectron2")
TRACED_FORMATS = ("torchscript", "onnx")
CONTAINERS = ("torch", "safetensors")

# Outputs of traced exports must match the eager model this closely (max |diff| / max |output|).
VERIFY_TOLERANCE = 1e-4
# The legacy (TorchScript-based) ONNX exporter: it takes dynamic_axes and needs no onnxscript,
# which the torch.export-based default needs and which is not a dependency of this project.
ONNX_OPSET = 17
_AUTHOR = f"resnext_det {__version__} export_backbone"
# detectron2 norms whose eval-mode forward and state dict are BatchNorm's.
_BN_NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN")


@dataclass
class ExportResult:
    """What :func:`export_backbone` wrote: the export, its sidecar and the sidecar's content."""

    path: Path
    sidecar: Path
    metadata: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        """Lines to print: where the files are and what the export leaves out."""
        m = self.metadata
        lines = [
            f"wrote {m['format']} export of {m['architecture']['name']}"
            f"{' + FPN' if m['architecture']['fpn'] else ''} to {self.path}",
            f"metadata: {self.sidecar}",
            "not included:",
            *(f"  - {item}" for item in m["not_included"]),
        ]
        if m.get("verification"):
            v = m["verification"]
            lines.append(
                f"checked against the eager model on inputs {v['input_shapes']}: max relative "
                f"error {v['max_relative_error']:.2e} (tolerance {v['tolerance']:g})"
            )
        return "\n".join(lines)


def export_backbone(
    cfg: CfgNode | str | os.PathLike,
    weights: str | os.PathLike,
    format: str,
    out: str | os.PathLike,
    *,
    fpn: bool = False,
    fold_bn: bool = False,
    container: str | None = None,
    opts: Sequence[str] = (),
) -> ExportResult:
    """Export the backbone of the checkpoint ``weights`` in ``format`` to ``out`` (+ ``out.json``).

    Args:
        cfg: the config the checkpoint was trained with: a CfgNode (``add_resnext_config`` applied)
            or a yaml file path. It decides the architecture; the checkpoint must match it.
        weights: a detectron2 training checkpoint (``{"model": ..., "iteration": ...}``) of an FPN
            detector (``backbone.bottom_up.*``, ``backbone.fpn_*``) or a C4 detector
            (``backbone.*``, ``roi_heads.res5.*``), or a bare backbone state dict, in any block
            form and any container :func:`resnext_det.weights.read_weights` reads (torch,
            safetensors, pickle; torchvision/timm and Caffe2 layouts too).
        format: one of :data:`FORMATS`.
        out: the file to write; the sidecar goes to ``<out>.json``.
        fpn: include the FPN (``detectron2``: ``backbone.fpn_*`` keys; traced formats: p2..p6
            outputs). torchvision and timm have no FPN.
        fold_bn: fold the (frozen / eval) BatchNorms into the convolutions before tracing; traced
            formats only (a state dict without BatchNorm no longer loads into torchvision's model).
        container: ``torch`` or ``safetensors`` for the state-dict formats; None: ``safetensors``
            when ``out`` ends in ``.safetensors``, else ``torch``.
        opts: config overrides, ``["KEY", "VALUE", ...]``, applied after the yaml.

    Returns:
        an :class:`ExportResult`; ``result.summary()`` says what was written and what was left out.

    Raises:
        ValueError: an unknown format or option, an architecture the format cannot hold, or a
            checkpoint with no backbone or one that does not match the config (naming the key and
            both shapes). Nothing is written.
        FileNotFoundError: no such config or checkpoint.

    Example::

        >>> r = export_backbone("configs/X50.yaml", "output/model_final.pth", "onnx", "x50.onnx",
        ...                     fpn=True, fold_bn=True)
        >>> r.metadata["outputs"]["p2"], r.metadata["input"]["format"]
        ({'channels': 256, 'stride': 4}, 'BGR')
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    out = Path(out)
    container = _check_options(format, out, fpn=fpn, fold_bn=fold_bn, container=container)
    cfg, config_file = _load_config(cfg, opts)
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {weights} does not exist")
    if out.resolve() in (weights.resolve(), _sidecar_path(weights).resolve()):
        raise ValueError(f"out ({out}) would overwrite the checkpoint or its sidecar")
    # Any container and layout (detectron2 detector or backbone, torchvision/timm, Caffe2), read
    # without running code from the file; the ResNet comes back in the grouped layout.
    source = read_weights(weights)

    model, bottom_up = _build_backbone(cfg, fpn=fpn)
    spec = bottom_up.spec
    if format in ("torchvision", "timm"):
        _check_torchvision_compatible(spec, cfg, format)
    what = f"the config's {spec.name}{' FPN' if fpn else ''} backbone"
    _load_checked(model, source, what)
    model.eval()
    grouped = to_grouped_state_dict(bottom_up.state_dict())
    conventions = _conventions(cfg, spec, source)

    metadata = _metadata(
        cfg=cfg,
        config_file=config_file,
        spec=spec,
        model=model,
        source=source,
        conventions=conventions,
        format=format,
        container=container,
        fpn=fpn,
        fold_bn=fold_bn,
    )
    if format in STATE_DICT_FORMATS:
        payload = _state_dict_payload(format, grouped, model if fpn else None, cfg)
        writer = _container_writer(container, format, payload, metadata)
    else:
        writer = _traced_writer(format, model, fold_bn=fold_bn, metadata=metadata)

    with staged_files([out, _sidecar_path(out)]) as (tmp_out, tmp_sidecar):
        writer(tmp_out)
        metadata[SIDECAR_SHA256] = sha256_of(tmp_out)  # read_weights trusts a sidecar that matches
        tmp_sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
    result = ExportResult(path=out, sidecar=_sidecar_path(out), metadata=metadata)
    logger.info("%s", result.summary())
    return result


# ----------------------------------------------------------------------------- options and config


def _check_options(format: str, out: Path, *, fpn: bool, fold_bn: bool, container: str | None):
    if out.is_dir():
        raise ValueError(f"out must be a file path; {out} is a directory")
    if fpn and format in ("torchvision", "timm"):
        raise ValueError(
            f"{format}'s ResNet has no FPN, so fpn=True (--fpn) cannot be exported as {format}; "
            f"use one of detectron2, torchscript, onnx for the FPN"
        )
    if fold_bn and format not in TRACED_FORMATS:
        raise ValueError(
            f"fold_bn (--fold-bn) applies to the traced formats ({', '.join(TRACED_FORMATS)}); "
            f"a {format} state dict keeps its BatchNorms so that {format}'s model loads it"
        )
    if format in TRACED_FORMATS:
        if container is not None:
            raise ValueError(
                f"container (--container) applies to the state-dict formats "
                f"({', '.join(STATE_DICT_FORMATS)}); a {format} export is its own file format"
            )
        return None
    if container is None:
        container = "safetensors" if out.suffix == ".safetensors" else "torch"
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {', '.join(CONTAINERS)}; got {container!r}")
    return container


def _load_config(cfg: CfgNode | str | os.PathLike, opts: Sequence[str]) -> tuple[CfgNode, str]:
    """The config as a fresh CfgNode (the caller's is not changed) and the file it came from."""
    if isinstance(cfg, CfgNode):
        return load_config(None, opts, base=cfg), None
    return load_config(cfg, opts), str(cfg)


def _build_backbone(cfg: CfgNode, *, fpn: bool) -> tuple[nn.Module, nn.Module]:
    """The backbone to export and its bottom-up ResNeXt (the same module without ``fpn``).

    Always the grouped form (all forms hold the same weights), with all of res2..res5 (a C4 config
    stops at res4 and keeps res5 in its ROI head), unfrozen, on the CPU. With ``fpn`` the config's
    own builder makes it, so an FPN of detectron2's ``build_resnet_fpn_backbone`` works too.
    """
    spec = ResNeXtSpec.from_config(cfg)
    # Sync/naive-sync BN are BatchNorm in eval mode with the same state dict, and need no process
    # group that way.
    norm = "BN" if spec.norm in ("SyncBN", "naiveSyncBN") else spec.norm
    spec = spec.replace(block_form="grouped", channels_last=False, norm=norm)
    if not fpn:
        return (model := make_resnext(spec, out_features=STAGE_NAMES, freeze_at=0)), model
    c = cfg.clone()
    c.defrost()
    c.MODEL.RESNEXT.BLOCK_FORM, c.MODEL.RESNEXT.CHANNELS_LAST = "grouped", False
    c.MODEL.RESNETS.NORM = norm
    c.MODEL.BACKBONE.FREEZE_AT = 0
    c.MODEL.RESNETS.OUT_FEATURES = list(STAGE_NAMES)
    model = build_backbone(c, ShapeSpec(channels=len(c.MODEL.PIXEL_MEAN))).cpu()
    bottom_up = getattr(model, "bottom_up", None)
    if bottom_up is None:
        raise ValueError(
            f"fpn=True but MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} does not build an FPN "
            f"(its backbone has no 'bottom_up')"
        )
    if not hasattr(bottom_up, "spec"):  # detectron2's own build_resnet_fpn_backbone
        bottom_up.spec = spec
    return model, bottom_up


def _check_torchvision_compatible(spec: ResNeXtSpec, cfg: CfgNode, format: str) -> None:
    """torchvision's and timm's ResNet fix some things detectron2 leaves open; name the field."""
    need = {
        "MODEL.RESNETS.STEM_OUT_CHANNELS": (spec.stem_out_channels, 64),
        "MODEL.RESNETS.RES2_OUT_CHANNELS": (spec.res2_out_channels, 256),
        # torchvision/timm stride in the 3x3 (ResNet "v1.5"); the weights would load but give other
        # outputs.
        "MODEL.RESNETS.STRIDE_IN_1X1": (spec.stride_in_1x1, False),
        # Their dilated variants keep dilation 1 in res5's first block; detectron2 dilates them all.
        "MODEL.RESNETS.RES5_DILATION": (spec.res5_dilation, 1),
        "number of input channels (len(MODEL.PIXEL_MEAN))": (len(cfg.MODEL.PIXEL_MEAN), 3),
    }
    for key, (got, allowed) in need.items():
        if got != allowed:
            raise ValueError(
                f"{format}'s ResNet needs {key}={allowed!r}; this model has {got!r}. Export it as "
                f"detectron2, torchscript or onnx instead"
            )
    if spec.norm not in _BN_NORMS:
        raise ValueError(
            f"{format}'s ResNet uses BatchNorm; MODEL.RESNETS.NORM={spec.norm!r} cannot be "
            f"exported as {format} (allowed: {', '.join(_BN_NORMS)}). Export it as detectron2, "
            f"torchscript or onnx instead"
        )


# ----------------------------------------------------------------------------- reading checkpoints


def _describe_source(source: Weights) -> str:
    """Where the backbone sat in the file, in words (for the sidecar and messages)."""
    if source.layout != "detectron2":
        return f"{source.layout} backbone"
    return {
        "backbone.bottom_up.": "FPN detector",
        "backbone.": "C4/DC5 detector",
        "bottom_up.": "FPN backbone",
        "": "bare backbone",
    }.get(source.file_prefix, f"detectron2 ({source.file_prefix}*)")


def _load_checked(model: nn.Module, source: Weights, what: str) -> None:
    """Load ``source`` into ``model`` by exact names, or raise without loading anything.

    ``plan_load`` already stops on a ResNet of another depth, C or d (naming the key and both
    shapes); what it only reports (an FPN of another width, keys the model needs that the file
    lacks) stops here too, because an export must hold exactly the trained weights.
    """
    state, report = plan_load(model, source)
    if report.shape_mismatched:
        key, got, want = report.shape_mismatched[0]
        prefix = "bottom_up." if hasattr(model, "bottom_up") else ""
        file_key = next(
            (k for k in source.other if map_prefix(k, source.file_prefix, prefix) == key), key
        )
        raise ValueError(
            f"checkpoint {source.path} does not match {what}: '{key}' (checkpoint '{file_key}') "
            f"has shape {got} in the checkpoint but {want} in the model the config builds"
        )
    if report.missing:
        hint = (
            ": it has no FPN weights; export without fpn=True (--fpn)"
            if any(k.startswith("fpn_") for k in report.missing)
            else ""
        )
        raise ValueError(
            f"checkpoint {source.path} ({_describe_source(source)}) lacks {len(report.missing)} "
            f"key(s) of {what} (first: '{report.missing[0]}'){hint}"
        )
    # One load of everything: a partial load would reset the FrozenBNs it does not cover
    # (detectron2's FrozenBatchNorm2d fills in identity statistics for missing keys).
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------------------- state-dict formats


def _state_dict_payload(
    format: str, grouped: dict[str, torch.Tensor], fpn_model: nn.Module | None, cfg: CfgNode
) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict export, under the target's key names."""
    grouped = {k: v.detach().clone() for k, v in grouped.items()}
    if format in ("torchvision", "timm"):
        return detectron2_to_torchvision(grouped)
    # detectron2: the layout the config's detector expects.
    c4 = cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads" and "res5" not in cfg.MODEL.RESNETS.OUT_FEATURES
    fpn_cfg = fpn_model is not None or "fpn" in cfg.MODEL.BACKBONE.NAME.lower()
    out: dict[str, torch.Tensor] = {}
    for k, v in grouped.items():
        if fpn_cfg:
            out[f"backbone.bottom_up.{k}"] = v
        elif c4 and k.startswith("res5."):
            out[f"roi_heads.{k}"] = v
        else:
            out[f"backbone.{k}"] = v
    if fpn_model is not None:
        for k, v in fpn_model.state_dict().items():
            if not k.startswith("bottom_up."):
                out[f"backbone.{k}"] = v.detach().clone()
    return out


def _container_writer(
    container: str, format: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Callable[[Path], None]:
    def write_torch(path: Path) -> None:
        if format == "detectron2":
            # The shape of detectron2's own checkpoints; matching_heuristics=False: the names are
            # exact, so DetectionCheckpointer loads them as they are.
            obj: Any = {"model": tensors, "__author__": _AUTHOR, "matching_heuristics": False}
        else:
            obj = tensors
        torch.save(obj, path)

    def write_safetensors(path: Path) -> None:
        from safetensors.torch import save_file  # noqa: PLC0415

        # safetensors holds str -> str metadata: the sidecar's top-level fields, as json.
        meta = {k: json.dumps(v) for k, v in metadata.items()}
        if format == "detectron2":
            meta.update(__author__=_AUTHOR, matching_heuristics="False")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    return write_safetensors if container == "safetensors" else write_torch


# ----------------------------------------------------------------------------- traced formats


class _FeatureTuple(nn.Module):
    """The backbone with its dict output as a tuple in a fixed order: tracers and ONNX need
    positional outputs, and the sidecar records the names."""

    def __init__(self, backbone: nn.Module, names: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        self.names = list(names)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        return tuple(features[n] for n in self.names)


def _sample_inputs(channels: int, divisor: int) -> list[torch.Tensor]:
    """Two inputs of different batch size, height and width (multiples of ``divisor``): the first
    to trace, both to check that the traced graph did not freeze a shape."""
    g = torch.Generator().manual_seed(0)
    shapes = [(1, channels, 2 * divisor, 2 * divisor), (2, channels, 3 * divisor, 4 * divisor)]
    return [torch.randn(s, generator=g) for s in shapes]


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's warning about detectron2's ``Conv2d`` empty-input check (``x.numel()
    == 0 and self.training``): it is False for every eval-mode input, and the check on a second
    input size below would catch any shape the trace did freeze."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Converting a tensor to a Python boolean", category=Warning
        )
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX")
        yield


def _traced_writer(
    format: str, model: nn.Module, *, fold_bn: bool, metadata: dict[str, Any]
) -> Callable[[Path], None]:
    names = list(model.output_shape())
    channels = metadata["input"]["channels"]
    inputs = _sample_inputs(channels, metadata["input"]["size_divisibility"])
    with torch.no_grad():
        expected = [_FeatureTuple(model, names)(x) for x in inputs]
    if fold_bn:
        model = fold_batchnorm(copy.deepcopy(model))
    wrapper = _FeatureTuple(model, names).eval()

    def verify(run: Callable[[torch.Tensor], Sequence[torch.Tensor]], runtime: str) -> None:
        errors = [max_relative_error(list(run(x)), list(e)) for x, e in zip(inputs, expected)]
        worst = max(errors)
        if not worst <= VERIFY_TOLERANCE:
            raise RuntimeError(
                f"the {format} export differs from the eager model by {worst:.3g} (relative) on "
                f"inputs {[tuple(x.shape) for x in inputs]}; tolerance {VERIFY_TOLERANCE:g}. "
                f"Nothing was written"
            )
        metadata["verification"] = {
            "runtime": runtime,
            "input_shapes": [list(x.shape) for x in inputs],
            "max_relative_error": worst,
            "tolerance": VERIFY_TOLERANCE,
        }

    def write_torchscript(path: Path) -> None:
        with torch.no_grad(), _quiet_tracer():
            traced = torch.jit.trace(wrapper, inputs[0], check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            verify(loaded, f"torch.jit {torch.__version__}")

    def write_onnx(path: Path) -> None:
        dims = {0: "batch", 2: "height", 3: "width"}
        with torch.no_grad(), _quiet_tracer():
            torch.onnx.export(
                wrapper,
                (inputs[0],),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=names,
                dynamic_axes={"images": dims, **{n: dims for n in names}},
            )
        try:
            import onnxruntime as ort  # noqa: PLC0415
        except ImportError:
            logger.warning("onnxruntime is not installed: the ONNX export was not checked")
            metadata["verification"] = None
            return
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            return [torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()})]

        verify(run, f"onnxruntime {ort.__version__}")

    return write_torchscript if format == "torchscript" else write_onnx


# ----------------------------------------------------------------------------- metadata and files


def _sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _metadata(
    *,
    cfg: CfgNode,
    config_file: str | None,
    spec: ResNeXtSpec,
    model: nn.Module,
    source: Weights,
    conventions: Conventions,
    format: str,
    container: str | None,
    fpn: bool,
    fold_bn: bool,
) -> dict[str, Any]:
    shapes = model.output_shape()
    arch = {
        "name": spec.name,
        "depth": spec.depth,
        "blocks_per_stage": list(ARCHITECTURES[spec.depth]),
        "cardinality": spec.cardinality,
        "width_per_group": spec.width_per_group,
        # What the export holds, and the form the model was trained in (its config's; the
        # three forms hold the same weights).
        "block_form": "grouped",
        "source_block_form": cfg.MODEL.RESNEXT.BLOCK_FORM,
        "norm": spec.norm,
        "stem_out_channels": spec.stem_out_channels,
        "res2_out_channels": spec.res2_out_channels,
        "stride_in_1x1": spec.stride_in_1x1,
        "res5_dilation": spec.res5_dilation,
        "fpn": fpn,
    }
    if fpn:
        arch.update(
            fpn_out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
            fpn_in_features=list(cfg.MODEL.FPN.IN_FEATURES),
            fpn_norm=cfg.MODEL.FPN.NORM,
            fpn_fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        )
    divisor = getattr(model, "size_divisibility", 0) or 32
    meta: dict[str, Any] = {
        "format": format,
        "container": container,
        "architecture": arch,
        "input": {
            "format": cfg.INPUT.FORMAT,
            "channels": len(cfg.MODEL.PIXEL_MEAN),
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "normalization": (
                f"(N, C, H, W) float32, channels in {cfg.INPUT.FORMAT} order, 0-255 pixel values "
                f"minus pixel_mean, divided by pixel_std (detectron2's convention, not "
                f"torchvision's RGB 0-1 ImageNet one)"
            ),
            "size_divisibility": divisor,
        },
        "outputs": {
            name: {"channels": s.channels, "stride": s.stride} for name, s in shapes.items()
        },
        # The record resnext_det.weights reads back (read_weights / configure_for_weights).
        "conventions": conventions.to_dict(),
        "source": {
            "checkpoint": str(Path(source.path).resolve()),
            "sha256": sha256_of(source.path),
            "layout": _describe_source(source),
            "iteration": source.training_state.get("iteration"),
            "config_file": str(Path(config_file).resolve()) if config_file else None,
        },
        "resnext_det_version": __version__,
        "torch_version": torch.__version__,
        "bn_folded": fold_bn,
        "not_included": _not_included(format, source, fpn),
        "load": _how_to_load(format, spec),
    }
    return meta


def _not_included(format: str, source: Weights, fpn: bool) -> list[str]:
    # The file's non-ResNet keys, placed relative to an FPN backbone: fpn_* or nowhere (heads).
    placed = [map_prefix(k, source.file_prefix, "bottom_up.") for k in source.other]
    items = []
    if format in ("torchvision", "timm"):
        items.append(
            f"fc (the ImageNet classifier): {format}'s model has one, so load with strict=False; "
            f"the only missing keys are fc.weight and fc.bias"
        )
    if not fpn and any(k and k.startswith("fpn_") for k in placed):
        items.append("FPN (backbone.fpn_*): export with fpn=True / --fpn to include it")
    if any(k is None or not k.startswith("fpn_") for k in placed):
        c4 = source.file_prefix == "backbone." and any(
            k.startswith("roi_heads.res5.") for k in source.mapping.values()
        )
        items.append(
            "detector heads (proposal_generator.*, roi_heads.*"
            + ("; the ROI head's res5 is included, as res5)" if c4 else ")")
        )
    if format in TRACED_FORMATS:
        items.append(
            "pixel normalisation and padding: normalise as 'input' says and pad H and W to a "
            "multiple of input.size_divisibility before calling"
        )
    return items


def _conventions(cfg: CfgNode, spec: ResNeXtSpec, source: Weights) -> Conventions:
    """The input conventions of the exported weights: the config's, which the model was trained
    with. A file that records other conventions gets a warning (the config may be the wrong one)."""
    mine = Conventions(
        cfg.INPUT.FORMAT,
        tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
        tuple(float(v) for v in cfg.MODEL.PIXEL_STD),
        spec.stride_in_1x1,
        source=f"the config of the detector exported from {source.path} by resnext_det "
        f"{__version__}",
    )
    recorded = source.conventions.cfg_values()
    differ = {k: v for k, v in recorded.items() if mine.cfg_values()[k] != v}
    if differ:
        logger.warning(
            "%s records %s (%s) but the config has %s; the export is described with the "
            "config's values",
            source.path,
            differ,
            source.conventions.source,
            {k: mine.cfg_values()[k] for k in differ},
        )
    return mine


def _how_to_load(format: str, spec: ResNeXtSpec) -> dict[str, Any]:
    layers = list(ARCHITECTURES[spec.depth])
    c, d = spec.cardinality, spec.width_per_group
    if c == 1 and d == 64:
        name = f"resnet{spec.depth}"
    elif c == 1:
        name = f"wide_resnet{spec.depth}_{d // 64}" if d % 64 == 0 else None
    else:
        name = f"resnext{spec.depth}_{c}x{d}d"
    if format == "torchvision":
        import torchvision  # noqa: PLC0415

        known = name in torchvision.models.list_models(module=torchvision.models)
        return {
            "builder": f"torchvision.models.{name}()" if known else None,
            "constructor": (
                f"torchvision.models.ResNet(torchvision.models.resnet.Bottleneck, {layers}, "
                f"groups={c}, width_per_group={d})"
            ),
            "strict": False,
            "missing_keys": ["fc.weight", "fc.bias"],
        }
    if format == "timm":
        try:
            import timm  # noqa: PLC0415

            known = name is not None and timm.is_model(name)
        except ImportError:
            known = False
        return {
            "builder": f"timm.create_model({name!r})" if known else None,
            "constructor": (
                f"timm.models.resnet.ResNet(block=timm.models.resnet.Bottleneck, layers={layers}, "
                f"cardinality={c}, base_width={d})"
            ),
            "strict": False,
            "missing_keys": ["fc.weight", "fc.bias"],
        }
    if format == "detectron2":
        return {"config": "MODEL.WEIGHTS: <this file> (with the same MODEL.RESNETS architecture)"}
    if format == "torchscript":
        return {"code": "torch.jit.load(path)(images) -> tuple of the 'outputs' in order"}
    return {"code": "onnxruntime.InferenceSession(path).run(None, {'images': images})"}
