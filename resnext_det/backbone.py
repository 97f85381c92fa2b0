"""ResNeXt backbones registered in detectron2's ``BACKBONE_REGISTRY``.

The network is detectron2's own :class:`~detectron2.modeling.backbone.ResNet` (stem, stages built
by ``ResNet.make_stage``, freezing by ``freeze_at``) with the block class chosen by
``MODEL.RESNEXT.BLOCK_FORM``. With ``NUM_GROUPS: 1, WIDTH_PER_GROUP: 64`` the same builder makes
ResNet, so a ResNet/ResNeXt comparison changes the cardinality and width and nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicStem

from .blocks import BLOCK_FORMS

__all__ = [
    "ARCHITECTURES",
    "ResNeXtSpec",
    "ResNeXt",
    "make_resnext",
    "build_resnext_backbone",
    "build_resnext_fpn_backbone",
]

# Blocks per stage (res2..res5) for each depth. 50/101/152 are the paper's; 26 (timm's resnet26)
# is a small one for fast experiments; 200 is the deepest ResNet of He et al. 2016.
ARCHITECTURES: dict[int, tuple[int, int, int, int]] = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
NORMS = ("FrozenBN", "BN", "SyncBN", "GN", "naiveSyncBN", "")

# The config key each field comes from, for error messages.
CFG_KEYS = {
    "depth": "MODEL.RESNETS.DEPTH",
    "cardinality": "MODEL.RESNETS.NUM_GROUPS",
    "width_per_group": "MODEL.RESNETS.WIDTH_PER_GROUP",
    "block_form": "MODEL.RESNEXT.BLOCK_FORM",
    "norm": "MODEL.RESNETS.NORM",
    "stem_out_channels": "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "res2_out_channels": "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
    "res5_dilation": "MODEL.RESNETS.RES5_DILATION",
    "channels_last": "MODEL.RESNEXT.CHANNELS_LAST",
}


@dataclass(frozen=True)
class ResNeXtSpec:
    """The hyper-parameters of one ResNeXt (or ResNet, with ``cardinality=1, width_per_group=64``).

    ``width_per_group`` is the paper's bottleneck width d of res2; 0 means "the width that matches
    the complexity of the ResNet of the same depth" (see :mod:`resnext_det.complexity`).
    """

    depth: int = 50
    cardinality: int = 32
    width_per_group: int = 4
    block_form: str = "grouped"
    norm: str = "FrozenBN"
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    stride_in_1x1: bool = False
    res5_dilation: int = 1
    channels_last: bool = False

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"{CFG_KEYS[field]} must be {allowed}; got {getattr(self, field)!r}")

        if self.depth not in ARCHITECTURES:
            raise bad("depth", f"one of {', '.join(map(str, ARCHITECTURES))}")
        if self.block_form not in BLOCK_FORMS:
            raise bad("block_form", f"one of {', '.join(BLOCK_FORMS)}")
        if self.norm not in NORMS:
            raise bad("norm", f"one of {', '.join(repr(n) for n in NORMS)}")
        for field in ("cardinality", "stem_out_channels", "res2_out_channels"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
                raise bad(field, "a positive integer")
        if not isinstance(self.width_per_group, int) or self.width_per_group < 0:
            raise bad("width_per_group", "a positive integer (or 0: match the ResNet's complexity)")
        if self.res5_dilation not in (1, 2):
            raise bad("res5_dilation", "1 or 2")
        if self.width_per_group == 0:
            from .complexity import equal_complexity_width

            width = equal_complexity_width(
                self.cardinality,
                reference_width=self.res2_out_channels // 4,
                channels=self.res2_out_channels,
            )
            object.__setattr__(self, "width_per_group", width)

    @property
    def bottleneck_channels(self) -> int:
        """Width of res2's 3x3 conv: C * d."""
        return self.cardinality * self.width_per_group

    @property
    def name(self) -> str:
        """The usual short name: ``R-50`` for ResNet, ``X-101-32x8d`` for ResNeXt."""
        if self.cardinality == 1 and self.width_per_group * 4 == self.res2_out_channels:
            return f"R-{self.depth}"
        return f"X-{self.depth}-{self.cardinality}x{self.width_per_group}d"

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ResNeXtSpec:
        """Read and check the spec from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.RESNEXT``."""
        r = cfg.MODEL.RESNETS
        x = cfg.MODEL.get("RESNEXT", CfgNode())
        if any(r.get("DEFORM_ON_PER_STAGE", [False])):
            raise ValueError(
                "MODEL.RESNETS.DEFORM_ON_PER_STAGE is not supported by the ResNeXt backbones "
                "(deformable convs need detectron2's compiled ops); set it to [False]*4 or use "
                "build_resnet_backbone"
            )
        return cls(
            depth=r.DEPTH,
            cardinality=r.NUM_GROUPS,
            width_per_group=r.WIDTH_PER_GROUP,
            block_form=x.get("BLOCK_FORM", "grouped"),
            norm=r.NORM,
            stem_out_channels=r.STEM_OUT_CHANNELS,
            res2_out_channels=r.RES2_OUT_CHANNELS,
            stride_in_1x1=r.STRIDE_IN_1X1,
            res5_dilation=r.RES5_DILATION,
            channels_last=x.get("CHANNELS_LAST", False),
        )

    def replace(self, **changes) -> ResNeXtSpec:
        return dataclasses.replace(self, **changes)


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

    def __init__(self, stem, stages, *, spec: ResNeXtSpec, **kwargs):
        super().__init__(stem, stages, **kwargs)
        self.spec = spec
        if spec.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} takes (N, C, H, W) images; got shape {tuple(x.shape)}"
            )
        if self.spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def make_resnext(
    spec: ResNeXtSpec,
    *,
    in_channels: int = 3,
    out_features: list[str] | tuple[str, ...] | None = None,
    freeze_at: int = 0,
    num_classes: int | None = None,
) -> ResNeXt:
    """Build a ResNeXt from explicit arguments (no config).

    Args:
        spec: the architecture.
        in_channels: image channels.
        out_features: subset of ``stem, res2..res5`` (``linear`` with ``num_classes``) to return;
            stages past the last one asked for are dropped (as in detectron2, for C4 heads).
        freeze_at: detectron2's ``MODEL.BACKBONE.FREEZE_AT``: 0 freezes nothing, 1 the stem,
            k >= 2 the stem and res2..res{k}.
        num_classes: add global pooling and a ``linear`` classifier (ImageNet shape, for counting).

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
        stages.append(
            ResNet.make_stage(
                block_class,
                num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_ch,
                out_channels=out_ch,
                bottleneck_channels=bottleneck,
                num_groups=spec.cardinality,
                norm=spec.norm,
                stride_in_1x1=spec.stride_in_1x1,
                dilation=dilation,
            )
        )
        # The paper's rule: when the resolution halves, the width doubles.
        in_ch, out_ch, bottleneck = out_ch, out_ch * 2, bottleneck * 2
    # detectron2's ResNet drops the stages past the last output (C4 heads build res5 themselves).
    return ResNeXt(
        stem,
        stages,
        spec=spec,
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
    )


@BACKBONE_REGISTRY.register()
def build_resnext_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """ResNeXt + FPN: p2..p6 at strides 4..64, ``MODEL.FPN.OUT_CHANNELS`` each; p6 by max-pool.

    Submodule names are detectron2's (``bottom_up.*``, ``fpn_lateral{i}``, ``fpn_output{i}``), so
    checkpoints of detectron2's R/X-FPN detectors load unchanged.
    """
    bottom_up = build_resnext_backbone(cfg, input_shape)
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {in_features} asks for {missing}, which "
            f"MODEL.RESNETS.OUT_FEATURES {list(cfg.MODEL.RESNETS.OUT_FEATURES)} does not produce"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
