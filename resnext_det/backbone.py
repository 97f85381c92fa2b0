"""ResNeXt backbones registered in detectron2's ``BACKBONE_REGISTRY``.

The network is detectron2's own :class:`~detectron2.modeling.backbone.ResNet` (stem, stages built
by ``ResNet.make_stage``, freezing by ``freeze_at``) with the block class chosen by
``MODEL.RESNEXT.BLOCK_FORM``. With ``NUM_GROUPS: 1, WIDTH_PER_GROUP: 64`` the same builder makes
ResNet, so a ResNet/ResNeXt comparison changes the cardinality and width and nothing else.
The stages of ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` get deformable 3x3 convs
(:class:`resnext_det.deform.DeformBottleneckBlock`, detectron2's block on torchvision's op).
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicStem
from torch import nn

from .blocks import BLOCK_FORMS
from .deform import DeformBottleneckBlock
from .errors import ConfigError
from .spec import ARCHITECTURES, STAGE_NAMES, VARIANTS, ResNeXtSpec

__all__ = [
    "ARCHITECTURES",
    "VARIANTS",
    "ResNeXtSpec",
    "ResNeXt",
    "make_resnext",
    "build_resnext_backbone",
    "build_resnext_fpn_backbone",
    "build_resnext_retinanet_fpn_backbone",
]


class ResNeXt(ResNet):
    """detectron2's ResNet with ResNeXt blocks; remembers its :class:`ResNeXtSpec` as ``spec``.

    Output names, strides and channels are detectron2's (``res2``..``res5`` at strides 4..32), and
    the grouped form's parameter names are detectron2's, so its checkpoints load unchanged.

    Example::

        >>> net = make_resnext(ResNeXtSpec(depth=50, cardinality=32, width_per_group=4))
        >>> {k: tuple(v.shape) for k, v in net(torch.zeros(1, 3, 224, 224)).items()}
        {'res2': (1, 256, 56, 56), 'res3': (1, 512, 28, 28), 'res4': (1, 1024, 14, 14),
         'res5': (1, 2048, 7, 7)}
    """

    def __init__(self, stem, stages, *, spec: ResNeXtSpec, channels_last: bool = False, **kwargs):
        super().__init__(stem, stages, **kwargs)
        self.spec = spec
        # How the module runs, not what it is: not part of the spec (to_channels_last sets it).
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} takes (N, C, H, W) images; got shape {tuple(x.shape)}"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def make_resnext(
    spec: ResNeXtSpec,
    *,
    in_channels: int = 3,
    out_features: list[str] | tuple[str, ...] | None = None,
    freeze_at: int = 0,
    num_classes: int | None = None,
    channels_last: bool = False,
) -> ResNeXt:
    """Build a ResNeXt from explicit arguments (no config).

    Args:
        spec: the architecture.
        in_channels: image channels.
        out_features: subset of ``stem, res2..res5`` (``linear`` with ``num_classes``) to return;
            stages past the last one asked for are dropped (as in detectron2, for C4 heads).
        freeze_at: detectron2's ``MODEL.BACKBONE.FREEZE_AT``: 0 freezes nothing, 1 the stem,
            k >= 2 the stem and res2..res{k}. A frozen stage cannot be deformable (its offset
            convs start at zero and would stay there).
        num_classes: add global pooling and a ``linear`` classifier (ImageNet shape, for counting).
        channels_last: store weights and activations in NHWC (``MODEL.RESNEXT.CHANNELS_LAST``).

    Returns:
        a :class:`ResNeXt` whose forward returns a dict of the ``out_features``.
    """
    if num_classes is None:
        out_features = list(out_features or STAGE_NAMES)
    else:
        out_features = list(out_features or ["linear"])
    allowed = ("stem", *STAGE_NAMES) + (("linear",) if num_classes else ())
    unknown = [f for f in out_features if f not in allowed]
    if unknown or not out_features:
        raise ValueError(
            f"MODEL.RESNETS.OUT_FEATURES must be a non-empty subset of {list(allowed)}; got "
            f"{out_features}"
        )
    if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise ValueError(
            f"MODEL.BACKBONE.FREEZE_AT must be an integer in 0..5 (0: nothing, 1: stem, "
            f"k: stem and res2..res{{k}}); got {freeze_at!r}"
        )
    frozen_deformable = [
        s for i, s in enumerate(STAGE_NAMES) if spec.deform_on_per_stage[i] and freeze_at >= i + 2
    ]
    if frozen_deformable:
        first = STAGE_NAMES.index(frozen_deformable[0])
        raise ConfigError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE {list(spec.deform_on_per_stage)} makes "
            f"{', '.join(frozen_deformable)} deformable, but MODEL.BACKBONE.FREEZE_AT {freeze_at} "
            f"freezes {'it' if len(frozen_deformable) == 1 else 'them'}: the offset convs start "
            f"at zero and would never learn, leaving plain 3x3 convs. Set FREEZE_AT to at most "
            f"{first + 1}, or turn deformation off for the frozen stages"
        )
    stem = BasicStem(in_channels=in_channels, out_channels=spec.stem_out_channels, norm=spec.norm)
    block_class = BLOCK_FORMS[spec.block_form]
    in_ch, out_ch, bottleneck = (
        spec.stem_out_channels,
        spec.res2_out_channels,
        spec.bottleneck_channels,
    )
    stages = []
    for idx, num_blocks in enumerate(ARCHITECTURES[spec.depth]):
        dilation = spec.res5_dilation if idx == 3 else 1
        # res2 follows the stem's max-pool, and a dilated res5 keeps res4's resolution.
        first_stride = 1 if idx == 0 or dilation == 2 else 2
        stage_class, deform = block_class, {}
        if spec.deform_on_per_stage[idx]:
            stage_class = DeformBottleneckBlock
            deform = dict(
                deform_modulated=spec.deform_modulated,
                deform_num_groups=spec.deform_num_groups,
            )
        stages.append(
            ResNet.make_stage(
                stage_class,
                num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_ch,
                out_channels=out_ch,
                bottleneck_channels=bottleneck,
                num_groups=spec.cardinality,
                norm=spec.norm,
                stride_in_1x1=spec.stride_in_1x1,
                dilation=dilation,
                **deform,
            )
        )
        # The paper's rule: when the resolution halves, the width doubles.
        in_ch, out_ch, bottleneck = out_ch, out_ch * 2, bottleneck * 2
    # detectron2's ResNet drops the stages past the last output (C4 heads build res5 themselves).
    return ResNeXt(
        stem,
        stages,
        spec=spec,
        channels_last=channels_last,
        num_classes=num_classes,
        out_features=None if out_features == ["linear"] else out_features,
        freeze_at=freeze_at,
    )


@BACKBONE_REGISTRY.register()
def build_resnext_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNeXt:
    """ResNeXt stem + res2..res5 from ``cfg.MODEL.RESNETS`` / ``cfg.MODEL.RESNEXT``."""
    return make_resnext(
        ResNeXtSpec.from_config(cfg),
        in_channels=input_shape.channels,
        out_features=list(cfg.MODEL.RESNETS.OUT_FEATURES),
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        channels_last=bool(cfg.MODEL.get("RESNEXT", {}).get("CHANNELS_LAST", False)),
    )


def _fpn(cfg: CfgNode, bottom_up: ResNeXt, top_block: nn.Module) -> FPN:
    """detectron2's FPN on ``bottom_up`` with ``MODEL.FPN.*``, its keys checked first."""
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which "
            f"MODEL.RESNETS.OUT_FEATURES {list(cfg.MODEL.RESNETS.OUT_FEATURES)} does not produce"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if not isinstance(out_channels, int) or out_channels <= 0:
        raise ValueError(f"MODEL.FPN.OUT_CHANNELS must be a positive integer; got {out_channels!r}")
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_resnext_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNeXt + FPN: p2..p6 at strides 4..64, ``MODEL.FPN.OUT_CHANNELS`` each; p6 by max-pool.

    Submodule names are detectron2's (``bottom_up.*``, ``fpn_lateral{i}``, ``fpn_output{i}``), so
    checkpoints of detectron2's R/X-FPN detectors (Faster, Mask, Cascade R-CNN) load unchanged.
    """
    return _fpn(cfg, build_resnext_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_resnext_retinanet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNeXt + FPN for RetinaNet: p3..p7 at strides 8..128, ``MODEL.FPN.OUT_CHANNELS`` each.

    P6 is a stride-2 3x3 conv on res5 (C5, as detectron2's ``build_retinanet_resnet_fpn_backbone``
    does, not on P5), P7 one on relu(P6); module names are detectron2's, so its RetinaNet
    checkpoints load. ``configs/Base-RetinaNet.yaml`` sets ``MODEL.RESNETS.OUT_FEATURES`` and
    ``MODEL.FPN.IN_FEATURES`` to ``[res3, res4, res5]``.
    """
    bottom_up = build_resnext_backbone(cfg, input_shape)
    if "res5" not in bottom_up.output_shape():
        raise ValueError(
            "build_resnext_retinanet_fpn_backbone makes P6/P7 from res5: "
            f"MODEL.RESNETS.OUT_FEATURES must include 'res5'; got "
            f"{list(cfg.MODEL.RESNETS.OUT_FEATURES)}"
        )
    res5 = bottom_up.output_shape()["res5"].channels
    return _fpn(cfg, bottom_up, LastLevelP6P7(res5, cfg.MODEL.FPN.OUT_CHANNELS))
