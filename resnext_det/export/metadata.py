"""The sidecar ``<out>.json`` of an export: architecture, input convention, source checkpoint
and its sha256, what the file leaves out, and how to load it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode
from torch import nn

from ..spec import ARCHITECTURES, ResNeXtSpec, find_variant
from ..version import __version__
from ..weights.conventions import Conventions
from ..weights.detectron2 import map_prefix
from ..weights.io import sha256_of
from ..weights.loader import Weights
from ..weights.reader import classes_in
from .formats import TRACED_FORMATS
from .source import describe_source

__all__ = ["sidecar_path", "export_metadata", "export_conventions"]

logger = logging.getLogger(__name__)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def export_metadata(
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
        # detectron2's MODEL.RESNETS.DEFORM_* keys (resnext_det.deform): offset convs included.
        "deform_on_per_stage": list(spec.deform_on_per_stage),
        "deform_modulated": spec.deform_modulated,
        "deform_num_groups": spec.deform_num_groups,
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
            "layout": describe_source(source),
            "iteration": source.training_state.get("iteration"),
            "config_file": str(Path(config_file).resolve()) if config_file else None,
        },
        "resnext_det_version": __version__,
        "torch_version": torch.__version__,
        "bn_folded": fold_bn,
        "not_included": _not_included(format, source, fpn),
        "load": _how_to_load(format, spec),
    }
    # The class names the source checkpoint was trained on (a backbone export keeps them too:
    # they say what the detector it came from predicted).
    meta.update(classes_in(source.meta))
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


def export_conventions(cfg: CfgNode, spec: ResNeXtSpec, source: Weights) -> Conventions:
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
    standard = spec.stem_out_channels == 64 and spec.res2_out_channels == 256
    variant = find_variant(spec.depth, c, d) if standard else None
    if format == "torchvision":
        name = variant.torchvision if variant else None
        return {
            "builder": f"torchvision.models.{name}()" if name else None,
            "constructor": (
                f"torchvision.models.ResNet(torchvision.models.resnet.Bottleneck, {layers}, "
                f"groups={c}, width_per_group={d})"
            ),
            "strict": False,
            "missing_keys": ["fc.weight", "fc.bias"],
        }
    if format == "timm":
        name = variant.timm if variant else None
        return {
            "builder": f"timm.create_model({name!r})" if name else None,
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
        code = "torch.jit.load(path)(images) -> tuple of the 'outputs' in order"
        if any(spec.deform_on_per_stage):  # the graph calls torchvision::deform_conv2d
            code = "import torchvision; " + code
        return {"code": code}
    return {"code": "onnxruntime.InferenceSession(path).run(None, {'images': images})"}
