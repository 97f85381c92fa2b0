#!/usr/bin/env python
"""Convert ImageNet/detector weights of any supported layout into a detectron2-ready file.

    .venv/bin/python tools/convert_weights.py resnext50_32x4d-1a0047aa.pth X-50-32x4d.pth
    .venv/bin/python tools/convert_weights.py torchvision://resnext50_32x4d.IMAGENET1K_V1 X-50.pkl
    .venv/bin/python tools/convert_weights.py R-50.pkl R-50-d2.pkl --preset msra

Reads torchvision, timm, Caffe2 (Detectron ``.pkl``) and detectron2 files (torch, safetensors or
pickle containers; the layout is read from the keys), or a name (``torchvision://NAME[.TAG]``,
``timm://NAME``, an ``https://`` URL: fetched into torch's hub cache and verified), writes ``OUT``
atomically with the weights' conventions recorded inside, and prints the config lines to use with
it: INPUT.FORMAT, MODEL.PIXEL_MEAN/STD, MODEL.RESNETS.STRIDE_IN_1X1 and the architecture (DEPTH,
NUM_GROUPS, WIDTH_PER_GROUP) inferred from the shapes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
