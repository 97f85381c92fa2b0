#!/usr/bin/env python3
"""Deformable X-101 backbone on the CPU: this project's (torchvision's deform_conv2d) against
detectron2's own deformable ResNet, in one run.

detectron2 without its compiled ops runs only the forward pass of DCNv1 with one offset group on
the CPU, so that is the baseline: ``build_resnet_backbone`` with ``DEFORM_ON_PER_STAGE
[False, True, True, True]``. Every variant gets the same weights (random, offsets included, norm
statistics non-trivial) and the same images, and the rounds are interleaved (each round times
every variant once), so that a change in the machine's load hits all of them alike. Printed: the
median and fastest time of each variant, its ratio to detectron2's forward, the outputs'
max relative error against detectron2's, the machine's load average before and after.

Variants:

* ``detectron2 forward``: the baseline (eval, no grad).
* ``ours forward``: ``build_resnext_backbone``, the same weights (eval, no grad).
* ``ours forward, optimized``: ``optimize_for_inference`` (BN folded into every conv, the
  deformable ones included; channels_last).
* ``ours plain forward``: the same network without deformable stages (what deformation costs).
* ``ours train fp32``: one training iteration of the backbone (forward + backward of the sum of
  squares of its outputs; FrozenBN as in the zoo configs, stem and res2 frozen, FREEZE_AT 2).
* ``ours train channels_last+bf16``: the same under the CPU training defaults (CPU_TRAINING:
  channels_last, bf16 autocast; the deformable convs run in fp32 inside it). Only where the CPU
  has native bf16, as the trainer does.

Run it on a quiet machine; it owns its process (``--threads``)::

    .venv/bin/python benchmarks/deform_bench.py --size 512 640 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectron2.modeling import build_backbone  # noqa: E402

from resnext_det.config import load_config  # noqa: E402
from resnext_det.speed import (  # noqa: E402
    CPUTrainingSettings,
    apply_cpu_training,
    max_relative_error,
    native_bf16,
    optimize_for_inference,
)

REPO = Path(__file__).resolve().parents[1]


def _cfg(builder: str, depth: int, groups: int, width: int, deform: bool):
    cfg = load_config(REPO / "configs" / "Base-RCNN-FPN.yaml", ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.BACKBONE.NAME = builder
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP = depth, groups, width
    r.STRIDE_IN_1X1, r.NORM = False, "FrozenBN"
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    r.DEFORM_ON_PER_STAGE = [False, True, True, True] if deform else [False] * 4
    r.DEFORM_MODULATED, r.DEFORM_NUM_GROUPS = False, 1  # what detectron2 runs on the CPU
    return cfg


def _randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv2_offset" in name:  # detectron2 starts them at zero: make them deform
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 640), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--width", type=int, default=8)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # this script owns its process
    torch.manual_seed(0)
    arch = (args.depth, args.groups, args.width)

    theirs = build_backbone(_cfg("build_resnet_backbone", *arch, deform=True)).eval()
    _randomize(theirs, 0)
    state = theirs.state_dict()
    ours = build_backbone(_cfg("build_resnext_backbone", *arch, deform=True)).eval()
    ours.load_state_dict(state, strict=True)
    folded = build_backbone(_cfg("build_resnext_backbone", *arch, deform=True))
    folded.load_state_dict(state, strict=True)
    optimize_for_inference(folded)
    plain = build_backbone(_cfg("build_resnext_backbone", *arch, deform=False)).eval()
    plain.load_state_dict({k: v for k, v in state.items() if "offset" not in k}, strict=True)
    train32 = build_backbone(_cfg("build_resnext_backbone", *arch, deform=True)).train()
    train32.load_state_dict(state, strict=True)
    bf16 = native_bf16()
    train_bf16 = build_backbone(_cfg("build_resnext_backbone", *arch, deform=True)).train()
    train_bf16.load_state_dict(state, strict=True)
    apply_cpu_training(train_bf16, CPUTrainingSettings(channels_last=True, amp_dtype="bfloat16"))

    x = torch.randn(args.batch, 3, *args.size)
    with torch.no_grad():
        reference = theirs(x)
        errors = {
            "ours forward": max_relative_error(ours(x), reference),
            "ours forward, optimized": max_relative_error(folded(x), reference),
        }

    def forward(model):
        def run():
            with torch.no_grad():
                model(x)

        return run

    def train(model, amp: bool):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            sum(v.float().square().mean() for v in out.values()).backward()

        return run

    variants = {
        "detectron2 forward": forward(theirs),
        "ours forward": forward(ours),
        "ours forward, optimized": forward(folded),
        "ours plain forward": forward(plain),
        "ours train fp32": train(train32, False),
        **({"ours train channels_last+bf16": train(train_bf16, True)} if bf16 else {}),
    }
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.repeats + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            if round_:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    base = statistics.median(times["detectron2 forward"])
    print(
        f"X-{args.depth}-{args.groups}x{args.width}d backbone, res3-res5 deformable (DCNv1, one "
        f"offset group), batch {args.batch} at {args.size[0]}x{args.size[1]}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or ''}"
        f"{platform.machine()}, native bf16: {bf16}; {args.repeats} interleaved rounds"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    header = ("variant", "median s", "min s", "x detectron2 fwd", "max rel err")
    print(f"{header[0]:32} {header[1]:>9} {header[2]:>8} {header[3]:>17} {header[4]:>12}")
    for name, ts in times.items():
        err = errors.get(name)
        print(
            f"{name:32} {statistics.median(ts):9.3f} {min(ts):8.3f} "
            f"{statistics.median(ts) / base:17.2f} {'' if err is None else f'{err:.1e}':>12}"
        )
    if not bf16:
        print("(no bf16 training row: this CPU has no native bf16, where the trainer keeps fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
