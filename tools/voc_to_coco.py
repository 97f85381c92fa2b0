#!/usr/bin/env python
"""Convert Pascal VOC XML annotations (one per image) to a COCO instances json.

The logic, the examples and the flags: resnext_det/commands/voc.py
(also `resnext-det voc-to-coco`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.voc import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
