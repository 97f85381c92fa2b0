"""The paper's three equivalent forms of a ResNeXt block (Fig. 3 of Xie et al., CVPR 2017).

* ``grouped`` (form c): one 3x3 conv with C groups. This is detectron2's own
  :class:`~detectron2.modeling.backbone.resnet.BottleneckBlock` with ``num_groups=C``, reused as it
  is, so parameter names match detectron2's built-in ResNet and its checkpoints load unchanged.
* ``aggregated`` (form a): C separate bottleneck paths (1x1 -> 3x3 -> 1x1) whose outputs are summed;
  the last norm acts on the sum (it is the grouped form's ``conv3.norm``, which sees the same sum).
* ``concat`` (form b): C paths of 1x1 -> 3x3 whose outputs are concatenated before one 1x1 conv.

All forms hold the same parameters, laid out differently. The two path forms load the grouped
layout through ordinary ``load_state_dict`` (a ``_load_from_state_dict`` hook splits the grouped
tensors into paths), and :func:`to_grouped_state_dict` turns any form's ``state_dict()`` back into
the grouped layout, so checkpoints do not depend on the form.
"""

from __future__ import annotations

import re
from collections import defaultdict

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling.backbone.resnet import BottleneckBlock
from torch import nn

__all__ = [
    "AggregatedBottleneckBlock",
    "ConcatBottleneckBlock",
    "BLOCK_FORMS",
    "to_grouped_state_dict",
]

# Norm buffers/parameters that are per channel and so split across paths like conv outputs.
_NORM_KEYS = ("weight", "bias", "running_mean", "running_var")


class _PathBlockBase(CNNBlockBase):
    """Shared parts of the two path forms: shortcut, per-path 1x1 -> 3x3, and the split hook."""

    # Where the grouped layout's conv3 norm lives in this form (None: conv3.norm, as in grouped).
    _conv3_norm_name: str | None = None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        if bottleneck_channels % num_groups:
            raise ValueError(
                f"bottleneck_channels ({bottleneck_channels}) must be a multiple of num_groups "
                f"({num_groups})"
            )
        self.num_groups = num_groups
        self.group_width = bottleneck_channels // num_groups
        width = self.group_width
        if in_channels != out_channels:
            self.shortcut = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=False,
                norm=get_norm(norm, out_channels),
            )
        else:
            self.shortcut = None
        # As in detectron2: MSRA's ResNets stride in the 1x1, Caffe2/torch ResNeXts in the 3x3.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.paths = nn.ModuleList()
        for _ in range(num_groups):
            path = nn.Module()
            path.conv1 = Conv2d(
                in_channels,
                width,
                kernel_size=1,
                stride=stride_1x1,
                bias=False,
                norm=get_norm(norm, width),
            )
            path.conv2 = Conv2d(
                width,
                width,
                kernel_size=3,
                stride=stride_3x3,
                padding=dilation,
                bias=False,
                dilation=dilation,
                norm=get_norm(norm, width),
            )
            self.paths.append(path)
        for layer in self._convs():
            weight_init.c2_msra_fill(layer)

    def _convs(self) -> list[nn.Module]:
        convs = [m for p in self.paths for m in (p.conv1, p.conv2)]
        return convs + ([self.shortcut] if self.shortcut is not None else [])

    def _path_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.relu_(p.conv2(F.relu_(p.conv1(x)))) for p in self.paths]

    def _residual(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if f"{prefix}conv1.weight" in state_dict:
            _split_grouped_keys(
                state_dict, prefix, self.num_groups, self._split_conv3, self._conv3_norm_name
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    _split_conv3 = False


class AggregatedBottleneckBlock(_PathBlockBase):
    """Form (a): C bottleneck paths, each 1x1 -> 3x3 -> 1x1, summed, then the block's last norm.

    Parameter layout: ``paths.{i}.conv1``, ``paths.{i}.conv2`` (with norms), ``paths.{i}.conv3``
    (no norm) and ``norm3`` (the norm of the summed paths; the grouped form's ``conv3.norm``).
    """

    _conv3_norm_name = "norm3"
    _split_conv3 = True

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "BN", **kwargs):
        super().__init__(in_channels, out_channels, norm=norm, **kwargs)
        for path in self.paths:
            path.conv3 = Conv2d(self.group_width, out_channels, kernel_size=1, bias=False)
            weight_init.c2_msra_fill(path.conv3)
        self.norm3 = get_norm(norm, out_channels) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self._path_heads(x)
        out = self.paths[0].conv3(heads[0])
        for path, head in zip(self.paths[1:], heads[1:]):
            out = out + path.conv3(head)
        return self._residual(self.norm3(out), x)


class ConcatBottleneckBlock(_PathBlockBase):
    """Form (b): C paths of 1x1 -> 3x3, concatenated, then one 1x1 conv with norm (``conv3``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: str = "BN",
        bottleneck_channels: int,
        **kwargs,
    ):
        super().__init__(
            in_channels, out_channels, norm=norm, bottleneck_channels=bottleneck_channels, **kwargs
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(self.conv3(torch.cat(self._path_heads(x), dim=1)), x)


BLOCK_FORMS: dict[str, type[CNNBlockBase]] = {
    "grouped": BottleneckBlock,
    "aggregated": AggregatedBottleneckBlock,
    "concat": ConcatBottleneckBlock,
}


def _split_grouped_keys(state_dict, prefix, groups, split_conv3, conv3_norm_name):
    """Rewrite one block's grouped conv1/conv2/conv3 keys into per-path keys, in place."""
    for conv in ("conv1", "conv2"):
        for name in ("weight", *(f"norm.{k}" for k in _NORM_KEYS)):
            key = f"{prefix}{conv}.{name}"
            if key not in state_dict:
                continue
            for i, chunk in enumerate(_chunks(state_dict.pop(key), groups, dim=0, key=key)):
                state_dict[f"{prefix}paths.{i}.{conv}.{name}"] = chunk
        # BatchNorm's step counter is one scalar per norm: every path's norm gets a copy.
        key = f"{prefix}{conv}.norm.num_batches_tracked"
        if key in state_dict:
            count = state_dict.pop(key)
            for i in range(groups):
                state_dict[f"{prefix}paths.{i}.{conv}.norm.num_batches_tracked"] = count.clone()
    # conv2 of the grouped form already has per-group input channels, so only its outputs split.
    if split_conv3:
        key = f"{prefix}conv3.weight"
        if key in state_dict:
            for i, chunk in enumerate(_chunks(state_dict.pop(key), groups, dim=1, key=key)):
                state_dict[f"{prefix}paths.{i}.conv3.weight"] = chunk
        for k in list(state_dict):
            if k.startswith(f"{prefix}conv3.norm."):
                state_dict[f"{prefix}{conv3_norm_name}." + k[len(f"{prefix}conv3.norm.") :]] = (
                    state_dict.pop(k)
                )


def _chunks(tensor: torch.Tensor, groups: int, dim: int, key: str) -> tuple[torch.Tensor, ...]:
    if tensor.dim() <= dim or tensor.shape[dim] % groups:
        raise ValueError(
            f"cannot split '{key}' of shape {tuple(tensor.shape)} into {groups} paths along dim "
            f"{dim}: the checkpoint does not match this block's cardinality"
        )
    return tuple(c.clone() for c in torch.chunk(tensor, groups, dim=dim))


_PATH_KEY = re.compile(r"^(?P<block>.*\.)?paths\.(?P<i>\d+)\.(?P<rest>conv[123]\..+)$")


def to_grouped_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return ``state_dict`` (of any block form) in the grouped form's layout.

    Keys of the grouped form pass through unchanged, so this is safe to call on any checkpoint of
    the project or of detectron2's ResNet. Path keys ``<block>.paths.{i}.<conv>.<name>`` are
    concatenated in path order (outputs for conv1/conv2, inputs for the aggregated form's conv3),
    and the aggregated form's ``<block>.norm3.*`` becomes ``<block>.conv3.norm.*``.
    """
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    aggregated_blocks = set()
    for key, value in state_dict.items():
        match = _PATH_KEY.match(key)
        if match is None:
            out[key] = value
            continue
        block = match["block"] or ""
        groups[(block, match["rest"])][int(match["i"])] = value
        if match["rest"].startswith("conv3."):
            aggregated_blocks.add(block)
    for (block, rest), parts in groups.items():
        if sorted(parts) != list(range(len(parts))):
            raise ValueError(f"paths of '{block}{rest}' are not numbered 0..{len(parts) - 1}")
        if rest.endswith("num_batches_tracked"):  # one counter, copied into every path
            out[f"{block}{rest}"] = parts[0]
            continue
        dim = 1 if rest.startswith("conv3.") else 0
        out[f"{block}{rest}"] = torch.cat([parts[i] for i in range(len(parts))], dim=dim)
    for block in aggregated_blocks:
        for key in [k for k in out if k.startswith(f"{block}norm3.")]:
            out[f"{block}conv3.norm.{key[len(f'{block}norm3.') :]}"] = out.pop(key)
    return out
