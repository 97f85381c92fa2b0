"""Backbones for the detectron2 heads beyond Faster/Mask/Cascade R-CNN's P2-P6 FPN.

Mask R-CNN and Cascade (Mask) R-CNN use ``build_resnext_fpn_backbone`` (P2-P6) unchanged; their
configs differ from Faster R-CNN's only in the head keys. RetinaNet reads P3-P7, with P6 and P7
made from C5 by strided 3x3 convs (:class:`~detectron2.modeling.backbone.fpn.LastLevelP6P7`), as
detectron2's ``build_retinanet_resnet_fpn_backbone`` builds them; module names are the same, so
detectron2's RetinaNet checkpoints load.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from .backbone import build_resnext_backbone

__all__ = ["build_resnext_retinanet_fpn_backbone", "checked_fpn_in_features"]


def checked_fpn_in_features(cfg: CfgNode, bottom_up: Backbone) -> list[str]:
    """``MODEL.FPN.IN_FEATURES``, checked against what the bottom-up network produces."""
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which "
            f"MODEL.RESNETS.OUT_FEATURES {list(cfg.MODEL.RESNETS.OUT_FEATURES)} does not produce"
        )
    return in_features


@BACKBONE_REGISTRY.register()
def build_resnext_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNeXt + FPN for RetinaNet: p3..p7 at strides 8..128, ``MODEL.FPN.OUT_CHANNELS`` each.

    P6 is a stride-2 3x3 conv on res5 (C5, as detectron2 does, not on P5), P7 one on relu(P6).
    Set ``MODEL.RESNETS.OUT_FEATURES`` and ``MODEL.FPN.IN_FEATURES`` to ``[res3, res4, res5]``
    (``configs/Base-RetinaNet.yaml`` does).

    Example::

        >>> fpn = build_resnext_retinanet_fpn_backbone(cfg, ShapeSpec(channels=3))
        >>> {k: v.stride for k, v in fpn.output_shape().items()}
        {'p3': 8, 'p4': 16, 'p5': 32, 'p6': 64, 'p7': 128}
    """
    bottom_up = build_resnext_backbone(cfg, input_shape)
    in_features = checked_fpn_in_features(cfg, bottom_up)
    if "res5" not in bottom_up.output_shape():
        raise ValueError(
            "build_resnext_retinanet_fpn_backbone makes P6/P7 from res5: "
            f"MODEL.RESNETS.OUT_FEATURES must include 'res5'; got "
            f"{list(cfg.MODEL.RESNETS.OUT_FEATURES)}"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
