"""The architecture of a ResNeXt as plain data: the spec, the paper's template, named variants.

Pure (no modules are built here), so that weights, complexity, export and benchmarks can share one
description of a network without importing each other. :mod:`resnext_det.backbone` builds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from detectron2.config import CfgNode

__all__ = [
    "ARCHITECTURES",
    "STAGE_NAMES",
    "BLOCK_FORM_NAMES",
    "NORMS",
    "CFG_KEYS",
    "ResNeXtSpec",
    "Variant",
    "VARIANTS",
    "block_params",
    "equal_complexity_width",
    "find_variant",
    "variant_name",
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
# The paper's three equivalent block forms (Fig. 3); resnext_det.blocks.BLOCK_FORMS builds them.
BLOCK_FORM_NAMES = ("grouped", "aggregated", "concat")
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
    "deform_on_per_stage": "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
    "deform_modulated": "MODEL.RESNETS.DEFORM_MODULATED",
    "deform_num_groups": "MODEL.RESNETS.DEFORM_NUM_GROUPS",
}


@dataclass(frozen=True)
class ResNeXtSpec:
    """The hyper-parameters of one ResNeXt (or ResNet, with ``cardinality=1, width_per_group=64``).

    ``width_per_group`` is the paper's bottleneck width d of res2; 0 means "the width that matches
    the complexity of the ResNet of the same depth" (see :mod:`resnext_det.complexity`).

    ``deform_on_per_stage`` (res2..res5), ``deform_modulated`` (DCNv2) and ``deform_num_groups``
    are detectron2's deformable-convolution keys: the 3x3 conv of every block of a stage marked
    True is deformable (:mod:`resnext_det.deform`).
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
    deform_on_per_stage: tuple[bool, bool, bool, bool] = (False, False, False, False)
    deform_modulated: bool = False
    deform_num_groups: int = 1

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"{CFG_KEYS[field]} must be {allowed}; got {getattr(self, field)!r}")

        if self.depth not in ARCHITECTURES:
            raise bad("depth", f"one of {', '.join(map(str, ARCHITECTURES))}")
        if self.block_form not in BLOCK_FORM_NAMES:
            raise bad("block_form", f"one of {', '.join(BLOCK_FORM_NAMES)}")
        if self.norm not in NORMS:
            raise bad("norm", f"one of {', '.join(repr(n) for n in NORMS)}")
        for field in ("cardinality", "stem_out_channels", "res2_out_channels"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
                raise bad(field, "a positive integer")
        if not isinstance(self.width_per_group, int) or self.width_per_group <= 0:
            raise bad(
                "width_per_group",
                "a positive integer (for the width that matches the ResNet's complexity use "
                "ResNeXtSpec.template(...), or WIDTH_PER_GROUP 0 in a config)",
            )
        if self.res5_dilation not in (1, 2):
            raise bad("res5_dilation", "1 or 2")
        if self.norm == "GN":
            # detectron2's GN is GroupNorm(32, channels): every normalised width must divide by 32.
            widths = {
                "the stem": self.stem_out_channels,
                "res2's output": self.res2_out_channels,
                "res2's bottleneck (C*d)": self.bottleneck_channels,
            }
            odd = {k: v for k, v in widths.items() if v % 32}
            if odd:
                raise ValueError(
                    "MODEL.RESNETS.NORM 'GN' is GroupNorm with 32 groups, so every normalised "
                    "width must be a multiple of 32; "
                    + ", ".join(f"{k} is {v}" for k, v in odd.items())
                    + f" ({self.name}). Use another norm, or widths that divide by 32"
                )
            if self.block_form != "grouped":
                raise ValueError(
                    f"MODEL.RESNETS.NORM 'GN' with MODEL.RESNEXT.BLOCK_FORM {self.block_form!r} "
                    "is not supported: a path form normalises each path's d channels on its own, "
                    "which is not GroupNorm(32, C*d) over all of them, so its outputs would differ "
                    "from the grouped form's. Use BLOCK_FORM 'grouped' with GN"
                )
        self._check_deform()

    def _check_deform(self) -> None:
        stages = self.deform_on_per_stage
        if (
            isinstance(stages, (str, bytes))
            or not hasattr(stages, "__len__")
            or len(stages) != len(STAGE_NAMES)
            or not all(isinstance(v, bool) for v in stages)
        ):
            raise ConfigError(
                f"MODEL.RESNETS.DEFORM_ON_PER_STAGE must be 4 booleans (res2..res5); got {stages!r}"
            )
        # A list from a config (yacs, OmegaConf) becomes the tuple the field's type says, so that
        # specs compare and hash by value.
        object.__setattr__(self, "deform_on_per_stage", tuple(stages))
        if not isinstance(self.deform_modulated, bool):
            raise ConfigError(
                f"MODEL.RESNETS.DEFORM_MODULATED must be True or False; got "
                f"{self.deform_modulated!r}"
            )
        groups = self.deform_num_groups
        if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
            raise ConfigError(
                f"MODEL.RESNETS.DEFORM_NUM_GROUPS must be a positive integer; got {groups!r}"
            )
        on = self.deformable_stages
        if not on:
            return
        if self.block_form != "grouped":
            modulated = " with MODEL.RESNETS.DEFORM_MODULATED True" * self.deform_modulated
            raise ConfigError(
                f"MODEL.RESNETS.DEFORM_ON_PER_STAGE {list(stages)}{modulated} needs "
                f"MODEL.RESNEXT.BLOCK_FORM 'grouped'; got {self.block_form!r}: the path forms "
                "have no deformable 3x3 conv (detectron2's deformable block and checkpoints are "
                "grouped). Use BLOCK_FORM 'grouped', or DEFORM_ON_PER_STAGE [False]*4"
            )
        widths = {s: self.bottleneck_channels * 2 ** STAGE_NAMES.index(s) for s in on}
        odd = {s: w for s, w in widths.items() if w % groups}
        if odd:
            raise ConfigError(
                f"MODEL.RESNETS.DEFORM_NUM_GROUPS must divide the channels of every deformable "
                f"3x3 conv; got {groups}, and "
                + ", ".join(f"{s}'s is {w}" for s, w in odd.items())
                + f" ({self.name}). Use a divisor of {min(odd.values())}, e.g. 1"
            )

    @property
    def deformable_stages(self) -> tuple[str, ...]:
        """The stages whose 3x3 convs are deformable (``("res3", "res4", "res5")``, ...)."""
        return tuple(s for s, on in zip(STAGE_NAMES, self.deform_on_per_stage) if on)

    @property
    def bottleneck_channels(self) -> int:
        """Width of res2's 3x3 conv: C * d."""
        return self.cardinality * self.width_per_group

    @property
    def name(self) -> str:
        """The usual short name: ``R-50`` for ResNet, ``X-101-32x8d`` for ResNeXt."""
        return variant_name(
            self.depth, self.cardinality, self.width_per_group, self.res2_out_channels
        )

    @classmethod
    def template(cls, depth: int = 50, cardinality: int = 32, **fields) -> ResNeXtSpec:
        """The spec whose width d keeps the complexity of the ResNet of the same depth (the
        paper's template, Table 2): ``template(50, 32)`` is X-50-32x4d."""
        channels = fields.get("res2_out_channels", 256)
        width = equal_complexity_width(
            cardinality, reference_width=channels // 4, channels=channels
        )
        return cls(depth=depth, cardinality=cardinality, width_per_group=width, **fields)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> ResNeXtSpec:
        """Read and check the spec from ``cfg.MODEL.RESNETS`` and ``cfg.MODEL.RESNEXT``."""
        r = cfg.MODEL.RESNETS
        x = cfg.MODEL.get("RESNEXT", {})
        deform = r.get("DEFORM_ON_PER_STAGE", [False] * len(STAGE_NAMES))
        fields = dict(
            depth=r.DEPTH,
            cardinality=r.NUM_GROUPS,
            width_per_group=r.WIDTH_PER_GROUP,
            block_form=x.get("BLOCK_FORM", "grouped"),
            norm=r.NORM,
            stem_out_channels=r.STEM_OUT_CHANNELS,
            res2_out_channels=r.RES2_OUT_CHANNELS,
            stride_in_1x1=r.STRIDE_IN_1X1,
            res5_dilation=r.RES5_DILATION,
            deform_on_per_stage=tuple(deform) if isinstance(deform, (list, tuple)) else deform,
            deform_modulated=r.get("DEFORM_MODULATED", False),
            deform_num_groups=r.get("DEFORM_NUM_GROUPS", 1),
        )
        if fields["width_per_group"] == 0:
            del fields["width_per_group"]
            return cls.template(**fields)
        return cls(**fields)

    def replace(self, **changes) -> ResNeXtSpec:
        """A copy with ``changes``; ``width_per_group=0`` re-derives the template width for
        the new cardinality (a plain replace keeps the old d, no longer the template's)."""
        if changes.get("width_per_group") == 0:
            fields = {**dataclasses.asdict(self), **changes}
            del fields["width_per_group"]
            return type(self).template(**fields)
        return dataclasses.replace(self, **changes)


def variant_name(depth: Any, cardinality: int, width_per_group: int, res2_out_channels: int) -> str:
    """``R-50`` for a ResNet (C=1 and the bottleneck a quarter of the block's output), else
    ``X-{depth}-{C}x{d}d``: the names of the paper and of detectron2's model zoo."""
    if cardinality == 1 and width_per_group * 4 == res2_out_channels:
        return f"R-{depth}"
    return f"X-{depth}-{cardinality}x{width_per_group}d"


def block_params(cardinality: int, width: int, channels: int = 256) -> int:
    """Parameters of a res2 block with ``channels`` in and out: C * (c*d + 3*3*d*d + d*c)."""
    return cardinality * (channels * width + 9 * width * width + width * channels)


def equal_complexity_width(
    cardinality: int, *, reference_width: int = 64, channels: int = 256
) -> int:
    """The bottleneck width d whose C-path block has the parameters closest to the reference.

    The reference is the ResNet block (C=1, d=``reference_width``) with the same input/output
    ``channels``. Blocks in every stage scale alike (widths double together), so matching res2's
    block matches the whole network of any depth. For ResNet-50's budget this gives the paper's
    C = 1, 2, 4, 8, 32 -> d = 64, 40, 24, 14, 4. Ties go to the smaller width.
    """
    for name, value in (
        ("cardinality (MODEL.RESNETS.NUM_GROUPS)", cardinality),
        ("reference_width", reference_width),
        ("channels", channels),
    ):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    target = block_params(1, reference_width, channels)
    # params grow monotonically in d, so the best d is at most the reference width.
    return min(
        range(1, reference_width + 1),
        key=lambda d: (abs(block_params(cardinality, d, channels) - target), d),
    )


@dataclass(frozen=True)
class Variant:
    """A named network people use: its spec and the names other libraries give it."""

    spec: ResNeXtSpec
    torchvision: str | None  # torchvision.models builder (and weights enum) name
    timm: str | None  # timm model name of the same plain architecture

    @property
    def name(self) -> str:
        return self.spec.name


def _variants(*rows: tuple[int, int, int, str | None, str | None]) -> dict[str, Variant]:
    table = {}
    for depth, c, d, tv, timm in rows:
        spec = ResNeXtSpec(depth=depth, cardinality=c, width_per_group=d)
        table[spec.name] = Variant(spec, tv, timm)
    return table


def find_variant(depth: int, cardinality: int, width_per_group: int) -> Variant | None:
    """The named variant of this architecture (standard stem and widths), if it has a name."""
    return VARIANTS.get(variant_name(depth, cardinality, width_per_group, 256))


# The named variants of the paper, torchvision and detectron2's model zoo. Stride placement
# (STRIDE_IN_1X1) and the input conventions belong to the weights, not the architecture: see
# resnext_det.weights.conventions.
VARIANTS: dict[str, Variant] = _variants(
    (50, 1, 64, "resnet50", "resnet50"),
    (101, 1, 64, "resnet101", "resnet101"),
    (152, 1, 64, "resnet152", "resnet152"),
    (50, 32, 4, "resnext50_32x4d", "resnext50_32x4d"),
    (101, 32, 4, None, "resnext101_32x4d"),
    (101, 32, 8, "resnext101_32x8d", "resnext101_32x8d"),
    (101, 64, 4, "resnext101_64x4d", "resnext101_64x4d"),
    (152, 32, 8, None, None),
)
