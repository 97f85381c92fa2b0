"""The backbone to export, built from the config, and the checkpoint read and loaded into it: a
checkpoint that does not match the config stops here, naming the key and both shapes."""

from __future__ import annotations

import os
from collections.abc import Sequence

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from ..backbone import STAGE_NAMES, ResNeXtSpec, make_resnext
from ..config import load_config
from ..deform import deformable_layers
from ..weights.detectron2 import map_prefix
from ..weights.loader import Weights, plan_load
from .formats import BN_NORMS, ONNX_OPSET

__all__ = [
    "load_export_config",
    "build_export_backbone",
    "check_torchvision_compatible",
    "check_deformable_export",
    "describe_source",
    "load_checked",
]


def load_export_config(
    cfg: CfgNode | str | os.PathLike, opts: Sequence[str]
) -> tuple[CfgNode, str | None]:
    """The config as a fresh CfgNode (the caller's is not changed) and the file it came from."""
    if isinstance(cfg, CfgNode):
        return load_config(None, opts, base=cfg), None
    return load_config(cfg, opts), str(cfg)


def build_export_backbone(cfg: CfgNode, *, fpn: bool) -> tuple[nn.Module, nn.Module]:
    """The backbone to export and its bottom-up ResNeXt (the same module without ``fpn``).

    Always the grouped form (all forms hold the same weights), with all of res2..res5 (a C4 config
    stops at res4 and keeps res5 in its ROI head), unfrozen, on the CPU. With ``fpn`` the config's
    own builder makes it, so an FPN of detectron2's ``build_resnet_fpn_backbone`` works too.
    """
    spec = ResNeXtSpec.from_config(cfg)
    # Sync/naive-sync BN are BatchNorm in eval mode with the same state dict, and need no process
    # group that way.
    norm = "BN" if spec.norm in ("SyncBN", "naiveSyncBN") else spec.norm
    spec = spec.replace(block_form="grouped", norm=norm)
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


def check_torchvision_compatible(spec: ResNeXtSpec, cfg: CfgNode, format: str) -> None:
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
    if spec.norm not in BN_NORMS:
        raise ValueError(
            f"{format}'s ResNet uses BatchNorm; MODEL.RESNETS.NORM={spec.norm!r} cannot be "
            f"exported as {format} (allowed: {', '.join(BN_NORMS)}). Export it as detectron2, "
            f"torchscript or onnx instead"
        )


def check_deformable_export(bottom_up: nn.Module, format: str) -> None:
    """Refuse the formats that cannot hold deformable stages, naming the layers and the formats
    that can: torchvision/timm's ResNet has no offset convs, and the ONNX exporter (opset
    ``ONNX_OPSET``) has no deformable convolution for torchvision's ``deform_conv2d``."""
    layers = deformable_layers(bottom_up)
    if not layers or format not in ("torchvision", "timm", "onnx"):
        return
    stages = sorted({name.split(".")[0] for name in layers})
    what = {
        "onnx": f"the ONNX exporter (opset {ONNX_OPSET}) has no deformable convolution "
        "(torchvision::deform_conv2d)",
        "torchvision": "torchvision's ResNet has no offset convolutions (conv2_offset)",
        "timm": "timm's ResNet has no offset convolutions (conv2_offset)",
    }[format]
    raise ValueError(
        f"MODEL.RESNETS.DEFORM_ON_PER_STAGE makes {len(layers)} convolutions of "
        f"{', '.join(stages)} deformable ({layers[0]} ... {layers[-1]}), and {what}, so it "
        f"cannot be exported as {format}. Export it as torchscript (traced, checked against the "
        f"eager model) or detectron2 (state dict, torch or safetensors container) instead"
    )


def describe_source(source: Weights) -> str:
    """Where the backbone sat in the file, in words (for the sidecar and messages)."""
    if source.layout != "detectron2":
        return f"{source.layout} backbone"
    return {
        "backbone.bottom_up.": "FPN detector",
        "backbone.": "C4/DC5 detector",
        "bottom_up.": "FPN backbone",
        "": "bare backbone",
    }.get(source.file_prefix, f"detectron2 ({source.file_prefix}*)")


def load_checked(model: nn.Module, source: Weights, what: str) -> None:
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
            f"checkpoint {source.path} ({describe_source(source)}) lacks {len(report.missing)} "
            f"key(s) of {what} (first: '{report.missing[0]}'){hint}"
        )
    # One load of everything: a partial load would reset the FrozenBNs it does not cover
    # (detectron2's FrozenBatchNorm2d fills in identity statistics for missing keys).
    model.load_state_dict(state, strict=False)
