"""Winograd F(4x4, 3x3) for the dense 3x3 convolutions of the FPN and the RPN head, at inference.

The detector's widest dense convolutions are 256 -> 256 3x3 at stride 1: the FPN's output
convolutions (P2-P5) and the RPN head's (P2-P6), about half the multiply-adds of a Faster R-CNN
X-50-32x4d-FPN on a photo. Direct convolution does 9 multiply-adds per output and input channel;
Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", CVPR 2016) computes each 4x4 output tile from a 6x6 input tile with 36 products per
channel pair, 2.25 per output: the products become 36 matrix multiplications (tiles x C) @ (C x K)
and the transforms are additions with small integer weights. ``benchmarks/winograd_bench.py``
(``docs/benchmarks/winograd.md``: the 2-core AMD Zen 4 of ``docs/benchmarks.md``, quiet): over
P2-P6 of an 800x1216 photo, 256 channels, 0.50x the time of the direct (oneDNN) convolution, on
channels-last or NCHW maps; largest error 6e-6 of the output's peak against float64 (the direct
convolution's: 1-2e-6 channels-last, 3e-7 NCHW).

Only fp32 CPU inference is changed (no autograd, no autocast, maps of at least
:data:`MIN_PIXELS`): bf16 keeps the direct convolution. In bf16 the products' inputs are rounded
after the transforms, which amplify the rounding: the same file measures Winograd in bf16 at 0.55x
the direct bf16 time but with an error of 1e-1 of the peak, against 4e-3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from torch import nn

__all__ = ["WinogradConv2d", "winograd_convolutions", "winograd_conv3x3", "MIN_PIXELS"]

# Output tile m x m from an input tile (m + 2) x (m + 2): F(4x4, 3x3), Lavin & Gray's matrices.
_M = 4
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))  # fmt: skip
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))  # fmt: skip
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))  # fmt: skip

# Smallest map (height x width) computed by Winograd: below it the transforms' fixed costs lose
# (docs/benchmarks/winograd.md, against the direct convolution on channels-last maps: at 950 px,
# P5 of a photo, 0.80x at 256 channels but 1.07x at 128; at 247 px, P6, 1.2x and 2x; from
# 3800 px, P4, 0.53x and 0.72x).
MIN_PIXELS = 2048
# Smallest channel count (in and out): the products need width to run near the peak (same
# file, over P2-P6: 1.05x the direct time at 64 channels, 0.69x at 128).
MIN_CHANNELS = 128
# Tiles transformed and multiplied per step: the step's buffers stay in the CPU's caches.
_TILES_PER_STEP = 512


def _input_transform(d: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """``out = B^T d`` along a list of six equally shaped tensors, with the shared sums of
    Lavin & Gray's B^T (12 passes instead of 22 for the matrix as written)."""
    tmp = torch.empty_like(out[0])
    torch.add(d[4], d[2], alpha=-4, out=out[1])
    torch.add(d[3], d[1], alpha=-4, out=tmp)
    torch.sub(out[1], tmp, out=out[2])  # 4d1 - 4d2 - d3 + d4
    out[1].add_(tmp)  # -4d1 - 4d2 + d3 + d4
    torch.sub(d[4], d[2], out=out[3])
    torch.sub(d[3], d[1], out=tmp)
    torch.add(out[3], tmp, alpha=-2, out=out[4])  # 2d1 - d2 - 2d3 + d4
    out[3].add_(tmp, alpha=2)  # -2d1 - d2 + 2d3 + d4
    torch.add(d[4], d[0], alpha=4, out=out[0]).add_(d[2], alpha=-5)  # 4d0 - 5d2 + d4
    torch.add(d[5], d[1], alpha=4, out=out[5]).add_(d[3], alpha=-5)  # 4d1 - 5d3 + d5


def _output_transform(p: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """``out = A^T p`` along a list of six equally shaped tensors into four (10 passes, not
    16)."""
    tmp = torch.empty_like(p[0])
    torch.add(p[1], p[2], out=out[2])
    torch.sub(p[1], p[2], out=out[1])
    torch.add(p[3], p[4], out=tmp)
    torch.add(p[0], out[2], out=out[0]).add_(tmp)  # p0 + p1 + p2 + p3 + p4
    out[2].add_(tmp, alpha=4)  # p1 + p2 + 4p3 + 4p4
    torch.sub(p[3], p[4], out=tmp)
    torch.add(out[1], tmp, alpha=8, out=out[3]).add_(p[5])  # p1 - p2 + 8p3 - 8p4 + p5
    out[1].add_(tmp, alpha=2)  # p1 - p2 + 2p3 - 2p4


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """The (36, C, K) Winograd products' right-hand sides ``G g G^T`` of a (K, C, 3, 3) weight,
    computed in float64 and returned in fp32."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(len(_G) ** 2, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 3x3 convolution, stride 1, padding 1, of ``x`` (N, C, H, W) with the transformed weight
    ``u`` (:func:`transform_weight`), plus ``bias``; returns (N, K, H, W) in channels_last."""
    m, a = _M, _M + 2
    n, c, h, w = x.shape
    k = u.shape[2]
    th, tw = -(-h // m), -(-w // m)
    # NHWC, one zero row / column before, enough after for whole tiles (a copy, as padding is)
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, m * tw + 1 - w, 1, m * th + 1 - h))
    out = x.new_empty(n, th, m, tw, m, k)
    rows_per_step = max(1, _TILES_PER_STEP // (n * tw))
    buffers = None
    for i0 in range(0, th, rows_per_step):
        r = min(rows_per_step, th - i0)
        if buffers is None or buffers[0].shape[2] != r:  # the first step, and a shorter last one
            buffers = (
                x.new_empty(a, n, r, xp.shape[2], c),  # rows transformed
                x.new_empty(a, a, n, r, tw, c),  # tiles transformed
                x.new_empty(a * a, n * r * tw, k),  # products
                x.new_empty(m, a, n, r, tw, k),  # products, rows transformed back
            )
        rows_t, v, prod, half = buffers
        # input tiles: B^T d B, rows then columns, on strided views of the padded map
        src = [xp[:, m * i0 + j : m * i0 + j + m * (r - 1) + 1 : m] for j in range(a)]
        _input_transform(src, list(rows_t))
        src = [rows_t[:, :, :, j : j + m * (tw - 1) + 1 : m] for j in range(a)]
        _input_transform(src, [v[:, j] for j in range(a)])
        torch.bmm(v.view(a * a, -1, c), u, out=prod)
        if bias is not None:
            # A^T e A = 1 for e the unit tile at (1, 1): the bias reaches every output from there
            prod[a + 1] += bias
        # output tiles: A^T M A, written into their places in ``out``
        p = prod.view(a, a, n, r, tw, k)
        _output_transform(list(p), list(half))
        dst = out[:, i0 : i0 + r]
        for row in range(m):
            _output_transform(list(half[row]), [dst[:, :, row, :, col] for col in range(m)])
    y = out.view(n, m * th, m * tw, k)[:, :h, :w].permute(0, 3, 1, 2)
    return y.contiguous(memory_format=torch.channels_last)


def winograd_multiply_adds(out: torch.Tensor, in_channels: int) -> int:
    """The products of one :func:`winograd_conv3x3` call that returned ``out``: 36 per channel
    pair per 4x4 output tile (what runs in the matrix multiplications)."""
    n, k, h, w = out.shape
    return n * -(-h // _M) * -(-w // _M) * (_M + 2) ** 2 * in_channels * k


def _eligible(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


class WinogradConv2d(Conv2d):
    """detectron2's ``Conv2d`` that computes by :func:`winograd_conv3x3` where that pays: fp32
    CPU inference (no gradient, no autocast) on maps of at least :data:`MIN_PIXELS`; elsewhere
    ``Conv2d.forward``. Same parameters, state-dict keys, ``norm`` and ``activation``; the
    transformed weight is cached (not saved) and recomputed when the weight changes."""

    def uses_winograd(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` computes by Winograd."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # traced or compiled (TorchScript, ONNX, torch.export, torch.compile): one
            # convolution in the graph, not a loop frozen at this input's size
            return False
        w = self.weight
        return (
            x.dim() == 4
            and x.shape[0] > 0  # detectron2's Conv2d takes empty batches; Conv2d.forward does
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and w.dtype == torch.float32
            and x.shape[2] * x.shape[3] >= MIN_PIXELS
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and not torch.is_autocast_enabled("cpu")
        )

    def _transformed(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version)
        cached = self.__dict__.get("_winograd_weight")
        if cached is None or cached[0] != key:
            cached = (key, transform_weight(w))
            self.__dict__["_winograd_weight"] = cached
        return cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_winograd(x):
            return super().forward(x)
        x = winograd_conv3x3(x, self._transformed(), self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def winograd_convolutions(module: nn.Module) -> int:
    """Make ``module``'s dense 3x3 stride-1 detectron2 ``Conv2d`` layers of at least
    :data:`MIN_CHANNELS` channels :class:`WinogradConv2d` (the FPN's output convolutions, the RPN
    head's); in place (the class only: same parameters and keys), idempotent; returns how many
    changed. Grouped convolutions (a ResNeXt's 3x3) are left alone."""
    changed = 0
    for m in module.modules():
        if type(m) is Conv2d and _eligible(m):
            m.__class__ = WinogradConv2d
            changed += 1
    return changed
