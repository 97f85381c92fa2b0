#!/usr/bin/env python
"""Draw a trained detector's predictions on images (detectron2 demo/demo.py's flags) and write
COCO results; ``--compare`` draws two models side by side. The logic is resnext_det/predict.py.

Examples::

    python tools/predict.py --config-file configs/demo/faster_rcnn_X_demo.yaml \\
        --input output/demo/data/val --output preds/ \\
        --opts MODEL.WEIGHTS output/demo/model_2/model_final.pth
    python tools/predict.py --input 'photos/*.jpg' --output side_by_side/ \\
        --confidence-threshold 0.3 --compare R=configs/demo/faster_rcnn_R_demo.yaml:r.pth \\
        X=configs/demo/faster_rcnn_X_demo.yaml:x.pth --opts MODEL.DEVICE cpu
"""

from __future__ import annotations

import os
import sys

# Run from a checkout without installing: make the repository's package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from resnext_det.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
