#!/usr/bin/env python
"""Export the backbone of a trained detector for other code: torchvision, timm, detectron2,
TorchScript or ONNX, with a metadata sidecar ``<out>.json``.

Examples:
    tools/export_backbone.py --config-file configs/X50.yaml --weights output/model_final.pth \\
        --format torchvision --out x50_torchvision.pth
    tools/export_backbone.py --config-file configs/X50.yaml --weights output/model_final.pth \\
        --format timm --container safetensors --out x50_timm.safetensors
    tools/export_backbone.py --config-file configs/X50.yaml --weights output/model_final.pth \\
        --format onnx --fpn --fold-bn --out x50_fpn.onnx
    # config overrides go last, as in detectron2's tools:
    tools/export_backbone.py ... --format detectron2 --out bb.pth MODEL.RESNETS.NUM_GROUPS 32
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
