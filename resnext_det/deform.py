"""Deformable 3x3 convolutions for the ResNeXt stages, on torchvision's ``deform_conv2d``.

detectron2's :class:`~detectron2.modeling.backbone.resnet.DeformBottleneckBlock` is reused as it
is (its offset conv ``conv2_offset``, zero-initialised; its forward, which splits the offsets and
the DCNv2 mask), with one change: its ``conv2`` runs torchvision's op instead of detectron2's
compiled one. detectron2 without its CUDA build runs only DCNv1 forward with one deformable group
on the CPU; torchvision's op has CPU and CUDA kernels for forward and backward, the DCNv2 mask and
any number of offset groups, with the same offset layout as detectron2's kernels (per offset
group, per kernel tap, a (dy, dx) pair; the mask per group and tap). Parameter names and shapes
are detectron2's (``conv2_offset.{weight,bias}``, ``conv2.weight``, ``conv2.norm.*``), so its
deformable checkpoints load key for key.
"""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d, DeformConv, ModulatedDeformConv
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock as _D2DeformBottleneckBlock
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv2d", "DeformBottleneckBlock", "deformable_layers"]


class DeformConv2d(Conv2d):
    """A deformable convolution (DCNv1, or DCNv2 with ``mask``) with a detectron2 ``Conv2d``'s
    parameters (``weight``, optional ``bias``, ``norm``, ``activation``).

    It is a ``Conv2d`` so that what works on convolutions works on it: ``fold_batchnorm`` folds
    its ``norm`` into ``weight``/``bias`` (the sampling is linear in the weights), counting,
    channels_last and initialisation treat it as the 3x3 conv it replaces.

    Args:
        deformable_groups: offset groups: the input channels are split into this many groups,
            each sampled at its own offsets (detectron2's ``MODEL.RESNETS.DEFORM_NUM_GROUPS``).
        the rest: as :class:`torch.nn.Conv2d` and detectron2's ``Conv2d``.
    """

    def __init__(self, *args, deformable_groups: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if self.in_channels % deformable_groups:
            raise ValueError(
                f"deformable_groups ({deformable_groups}) must divide in_channels "
                f"({self.in_channels})"
            )
        self.deformable_groups = deformable_groups

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        low_precision = x.dtype != weight.dtype or torch.is_autocast_enabled(x.device.type)
        if low_precision:
            # torchvision's CPU kernel has no bf16/fp16 and no CPU autocast rule: compute in the
            # weights' dtype (fp32) and hand back the input's, as torchvision's CUDA autocast
            # rule does. Costs three casts per layer; the layer itself runs in fp32.
            with torch.autocast(x.device.type, enabled=False):
                out = deform_conv2d(
                    x.to(weight.dtype),
                    offset.to(weight.dtype),
                    weight,
                    bias,
                    stride=self.stride,
                    padding=self.padding,
                    dilation=self.dilation,
                    mask=None if mask is None else mask.to(weight.dtype),
                )
            out = out.to(x.dtype)
        else:
            out = deform_conv2d(
                x,
                offset,
                weight,
                bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=mask,
            )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", deformable_groups={self.deformable_groups}"


class DeformBottleneckBlock(_D2DeformBottleneckBlock):
    """detectron2's ``DeformBottleneckBlock`` (``num_groups`` = cardinality C) whose deformable
    3x3 conv runs torchvision's ``deform_conv2d``: trainable on the CPU, DCNv2 and several offset
    groups everywhere. Same arguments, parameter names, initialisation (offsets start at zero, so
    a fresh block computes what the plain block would) and forward as detectron2's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        deform_num_groups: int = 1,
        **kwargs,
    ):
        if bottleneck_channels % deform_num_groups:
            raise ValueError(
                f"deform_num_groups ({deform_num_groups}) must divide bottleneck_channels "
                f"({bottleneck_channels})"
            )
        super().__init__(
            in_channels,
            out_channels,
            bottleneck_channels=bottleneck_channels,
            deform_num_groups=deform_num_groups,
            **kwargs,
        )
        d2 = self.conv2  # detectron2's (compiled-op) DeformConv / ModulatedDeformConv
        # Assigned under the same name, so the module keeps detectron2's parameter order.
        self.conv2 = DeformConv2d(
            d2.in_channels,
            d2.out_channels,
            kernel_size=d2.kernel_size,
            stride=d2.stride,
            padding=d2.padding,
            dilation=d2.dilation,
            groups=d2.groups,
            bias=False,
            norm=d2.norm,
            deformable_groups=deform_num_groups,
        )
        weight_init.c2_msra_fill(self.conv2)


def deformable_layers(module: nn.Module) -> list[str]:
    """Names of the deformable convolutions inside ``module`` (``res3.0.conv2``, ...): this
    module's and detectron2's own (a backbone its ``build_resnet_backbone`` made)."""
    kinds = (DeformConv2d, DeformConv, ModulatedDeformConv)
    return [name for name, m in module.named_modules() if isinstance(m, kinds)]
