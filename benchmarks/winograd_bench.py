#!/usr/bin/env python3
"""The FPN's and the RPN head's 3x3 convolution on a photo's FPN levels: PyTorch's direct
convolution against :class:`resnext_det.winograd.WinogradConv2d`, in one run.

The case: one 256 -> 256 3x3 convolution (stride 1, padding 1, bias: the shape of the FPN's
output convolutions and the RPN head's) on each level P2-P6 of an 800x1216 image, fp32, no
gradient. Variants, each timed once per round and level, rounds interleaved:

* ``direct, NCHW``: ``F.conv2d`` on NCHW maps (detectron2's predictor as it runs).
* ``direct, channels_last``: on channels_last maps (the project's optimised detector before
  Winograd).
* ``WinogradConv2d``: the layer ``optimize_for_inference`` puts there (Winograd F(4x4, 3x3) on
  maps of at least ``MIN_PIXELS``, the direct convolution below).
* ``Winograd on every level``: :func:`winograd_conv3x3` whatever the size (where the threshold
  comes from).
* with ``--bf16``: the direct convolution and Winograd with bf16 maps and weights (why bf16
  inference keeps the direct convolution).

The process keeps freed memory (:func:`resnext_det.runtime.keep_freed_memory`, as the project's
commands run; every variant alike), so no pass pays page faults for its buffers.

Printed per level and in total: median time, ratio to ``direct, NCHW``, and the largest error
against a float64 convolution relative to the output's peak; threads, CPU, load average before and
after. It owns its process::

    .venv/bin/python benchmarks/winograd_bench.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.layers import Conv2d  # noqa: E402

from resnext_det.env import machine_info  # noqa: E402
from resnext_det.runtime import keep_freed_memory  # noqa: E402
from resnext_det.winograd import (  # noqa: E402
    MIN_PIXELS,
    transform_weight,
    winograd_conv3x3,
    winograd_convolutions,
)

STRIDES = (4, 8, 16, 32, 64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--bf16", action="store_true", help="bf16 variants too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    g = torch.Generator().manual_seed(0)
    c = args.channels
    conv = Conv2d(c, c, 3, padding=1)
    torch.nn.init.normal_(conv.weight, std=1 / (3 * c**0.5), generator=g)
    torch.nn.init.normal_(conv.bias, generator=g)
    weight, bias = conv.weight.detach(), conv.bias.detach()
    weight_cl = weight.contiguous(memory_format=torch.channels_last)
    layer = Conv2d(c, c, 3, padding=1).to(memory_format=torch.channels_last)
    layer.load_state_dict(conv.state_dict())
    winograd_convolutions(layer)
    u = transform_weight(weight)

    levels = {}
    for s in STRIDES:
        h, w = math.ceil(args.size[0] / s), math.ceil(args.size[1] / s)
        x = torch.randn(1, c, h, w, generator=g)
        levels[f"P{int(math.log2(s))} {h}x{w}"] = (
            x,
            x.contiguous(memory_format=torch.channels_last),
        )

    bf16 = {"weight": weight_cl.bfloat16(), "bias": bias.bfloat16(), "u": u.bfloat16()}

    def variants(x, x_cl):
        found = {
            "direct, NCHW": lambda: F.conv2d(x, weight, bias, padding=1),
            "direct, channels_last": lambda: F.conv2d(x_cl, weight_cl, bias, padding=1),
            "WinogradConv2d": lambda: layer(x_cl),
            "Winograd on every level": lambda: winograd_conv3x3(x_cl, u, bias),
        }
        if args.bf16:
            x_bf16 = x_cl.bfloat16()
            found["direct, bf16"] = lambda: F.conv2d(
                x_bf16, bf16["weight"], bf16["bias"], padding=1
            )
            found["Winograd, bf16"] = lambda: winograd_conv3x3(x_bf16, bf16["u"], bf16["bias"])
        return found

    names = list(variants(*next(iter(levels.values()))))
    errors: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for level, (x, x_cl) in levels.items():
            ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
            errors[level] = {
                name: ((run().double() - ref).abs().max() / ref.abs().max()).item()
                for name, run in variants(x, x_cl).items()
            }
        times = {level: {name: [] for name in names} for level in levels}
        load_before = os.getloadavg()
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for level, (x, x_cl) in levels.items():
                for name, run in variants(x, x_cl).items():
                    start = time.perf_counter()
                    run()
                    times[level][name].append(time.perf_counter() - start)
        load_after = os.getloadavg()

    print(
        f"3x3 convolution {c} -> {c} on P2-P6 of {args.size[0]}x{args.size[1]}, fp32; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{machine_info('cpu')['cpu']}; {args.rounds} interleaved rounds after one warm-up; "
        f"WinogradConv2d computes by Winograd from {MIN_PIXELS} pixels; freed memory "
        f"{'kept' if kept else 'returned (the allocator setting did not take)'}"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}\n")
    print("| level | " + " | ".join(f"{n} ms (x NCHW, error)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    total = dict.fromkeys(names, 0.0)
    for level in levels:
        med = {n: statistics.median(times[level][n][1:]) for n in names}
        for n in names:
            total[n] += med[n]
        base = med[names[0]]
        cells = [
            f"{med[n] * 1e3:.1f} ({med[n] / base:.2f}x, {errors[level][n]:.0e})" for n in names
        ]
        print(f"| {level} | " + " | ".join(cells) + " |")
    base = total[names[0]]
    cells = [f"{total[n] * 1e3:.1f} ({total[n] / base:.2f}x)" for n in names]
    print("| all levels | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
