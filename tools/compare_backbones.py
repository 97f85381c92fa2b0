#!/usr/bin/env python
"""Compare detectors (e.g. ResNet-50 vs ResNeXt-50 32x4d) on COCO metrics, with honest intervals.

The logic, the examples and the flags: resnext_det/commands/compare.py (also `resnext-det compare`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
