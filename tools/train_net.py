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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import resnext_det  # noqa: E402,F401  (registers the ResNeXt backbones)
from resnext_det.commands.train import argument_parser  # noqa: E402,F401
from resnext_det.commands.train import main as command  # noqa: E402
from resnext_det.commands.train import run as main  # noqa: E402,F401  (per process, as detectron2's)

if __name__ == "__main__":
    sys.exit(command())
