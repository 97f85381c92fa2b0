#!/usr/bin/env python3
"""The box head's RoI pooling on a photo-sized FPN: detectron2's ``ROIPooler`` with torchvision's
``roi_align`` against the same pooler with :class:`resnext_det.roi_align.ChannelsLastROIAlign`,
in one run.

The case: the four FPN levels P2-P5 (256 channels) of an 800x1216 image and 1000 proposals (the
RPN's post-NMS count at test time), with box sides log-uniform in 16-800 px and aspect ratios in
1/2-2, pooled to 7x7 with ``sampling_ratio`` 0 and ``aligned`` True (detectron2's
``ROIAlignV2``, the FPN configs' box pooler), by ``ROIPooler`` itself (level assignment and
scatter included). Variants, each timed once per round, rounds interleaved:

* ``torchvision, NCHW maps``: detectron2's predictor as it runs (fp32, NCHW).
* ``torchvision, channels_last maps``: the project's optimised detector before this pooler
  (torchvision's kernel copies each level to NCHW first).
* ``channels_last pooler``: ``ChannelsLastROIAlign`` on the channels_last maps.
* with ``--bf16`` (CPUs with native bf16): the last two with bf16 maps under bf16 autocast,
  as ``INFERENCE_AMP_DTYPE bfloat16`` runs them (torchvision's kernel casts to fp32).
* with ``--backward``: forward and backward (the gradient of the maps), fp32, as in training.

Printed: median and fastest time, ratio to the first variant, max error relative to the largest
output of the first, threads, CPU, load average before and after. It owns its process::

    .venv/bin/python benchmarks/roi_align_bench.py --threads 2 --rounds 5 --bf16 --backward
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402

from resnext_det.env import machine_info  # noqa: E402
from resnext_det.roi_align import channels_last_roi_align  # noqa: E402
from resnext_det.speed import native_bf16  # noqa: E402

STRIDES = (4, 8, 16, 32)


def case(height: int, width: int, num_boxes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(1, 256, math.ceil(height / s), math.ceil(width / s), generator=g)
        for s in STRIDES
    ]
    side = torch.exp(torch.empty(num_boxes).uniform_(math.log(16), math.log(800), generator=g))
    aspect = torch.exp(torch.empty(num_boxes).uniform_(-math.log(2), math.log(2), generator=g))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = torch.rand(num_boxes, generator=g) * width, torch.rand(num_boxes, generator=g) * height
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    return maps, [Boxes(xyxy)]


def pooler(channels_last: bool) -> ROIPooler:
    p = ROIPooler(7, tuple(1 / s for s in STRIDES), 0, "ROIAlignV2")
    if channels_last:
        channels_last_roi_align(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--boxes", type=int, default=1000)
    parser.add_argument("--bf16", action="store_true", help="bf16 variants (native bf16 only)")
    parser.add_argument("--backward", action="store_true", help="forward+backward variants")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    maps, boxes = case(*args.size, args.boxes)
    nhwc = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    theirs, ours = pooler(False), pooler(True)

    def forward(p, x, amp=False):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                return p(x, boxes)

        return run

    def train(p, x):
        def run():
            leaves = [m.clone().requires_grad_() for m in x]
            out = p(leaves, boxes)
            out.square().sum().backward()
            return out.detach()

        return run

    variants = {
        "torchvision, NCHW maps": forward(theirs, maps),
        "torchvision, channels_last maps": forward(theirs, nhwc),
        "channels_last pooler": forward(ours, nhwc),
    }
    if args.bf16 and native_bf16():
        bf16 = [m.bfloat16() for m in nhwc]
        variants["torchvision, bf16 autocast"] = forward(theirs, bf16, amp=True)
        variants["channels_last pooler, bf16 autocast"] = forward(ours, bf16, amp=True)
    if args.backward:
        variants["torchvision, NCHW, forward+backward"] = train(theirs, maps)
        variants["channels_last pooler, forward+backward"] = train(ours, nhwc)

    reference = variants["torchvision, NCHW maps"]().float()
    errors = {
        name: ((run().float() - reference).abs().max() / reference.abs().max()).item()
        for name, run in variants.items()
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    print(
        f"RoI pooling, {args.boxes} boxes on P2-P5 of {args.size[0]}x{args.size[1]}, 256 channels; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{machine_info('cpu')['cpu']}, native bf16: {native_bf16()}; "
        f"{args.rounds} interleaved rounds"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}\n")
    base = statistics.median(times["torchvision, NCHW maps"])
    print("| variant | median ms | fastest ms | x torchvision NCHW | max rel. error |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        med = statistics.median(t)
        print(
            f"| {name} | {med * 1e3:.1f} | {min(t) * 1e3:.1f} | {med / base:.2f}x | "
            f"{errors[name]:.1e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
