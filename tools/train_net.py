#!/usr/bin/env python
"""Train or evaluate a Faster R-CNN with a ResNeXt (or ResNet) FPN backbone.

The logic lives in :mod:`resnext_det.training`; this is detectron2's ``tools/train_net.py``
shape around it.

Examples::

    # one process, CPU, the generated demo data
    python tools/train_net.py --config-file configs/demo/faster_rcnn_X_demo.yaml MODEL.DEVICE cpu

    # 8 GPUs on this machine (detectron2's launcher), or 2 CPU processes (gloo) without CUDA
    python tools/train_net.py --num-gpus 8 --config-file configs/faster_rcnn_X_50_32x4d_FPN_1x.yaml

    # torchrun (clusters; gloo on CPU, NCCL on GPU)
    torchrun --nproc_per_node 2 tools/train_net.py --config-file CFG MODEL.DEVICE cpu

    # continue after a crash or pre-emption, then evaluate the last checkpoint
    python tools/train_net.py --config-file CFG --resume
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth

    # 3 runs that differ only in SEED (OUT/seed_0 .. seed_2), 2 at a time; or one of them
    python tools/train_net.py --config-file CFG --seed-runs 3 --parallel 2 OUTPUT_DIR OUT
    python tools/train_net.py --config-file CFG --seed $SLURM_ARRAY_TASK_ID OUTPUT_DIR OUT

    # a COCO-format dataset of your own
    python tools/train_net.py --config-file CFG --register mine_train ann.json images/ \\
        DATASETS.TRAIN "('mine_train',)"
"""

from __future__ import annotations

import os
import sys

# Run from a checkout without installing: make the repository's package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import resnext_det  # noqa: E402,F401  (registers the ResNeXt backbones)
from resnext_det.training import (  # noqa: E402
    argument_parser,
    evaluate,
    launch_from_args,
    seed_runs_from_args,
    setup,
    train,
)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume)
    # --seed K is one run of a set: run again, it continues (as --seed-runs does)
    return train(cfg, resume=args.resume or args.seed is not None)


if __name__ == "__main__":
    parser = argument_parser()
    args = parser.parse_args()
    print("Command Line Args:", args)
    if seed_runs_from_args(args, parser) is None:
        launch_from_args(main, args, parser)
