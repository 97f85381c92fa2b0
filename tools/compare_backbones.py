#!/usr/bin/env python
"""Compare detectors (e.g. ResNet-50 vs ResNeXt-50 32x4d) on COCO metrics, with honest intervals.

From models (each is run on the same images, timed, and its results json saved):

    tools/compare_backbones.py --model R50=configs/r50.yaml:out_r50/model_final.pth \\
        --model X50=configs/x50.yaml:out_x50/model_final.pth \\
        --coco-json val.json --image-root images/ --out output/compare

From results files (no model needed; --config adds backbone params/GFLOPs):

    tools/compare_backbones.py --gt val.json --results R50=r50.json --results X50=x50.json \\
        --out output/compare

Several training runs per model: repeat the name, once per run (models may have different
numbers of runs). The intervals then cover both the test images and the training runs:

    tools/compare_backbones.py --gt val.json \\
        --results R50=r_s0.json --results R50=r_s1.json --results R50=r_s2.json \\
        --results X50=x_s0.json --results X50=x_s1.json --results X50=x_s2.json --out cmp/

With one run per model the intervals cover test images only, and the report says so.
The first model (or --baseline) is the baseline. Writes comparison.{md,json,csv,png} to --out,
only when every model succeeded, and prints the table.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
