#!/usr/bin/env python
"""Export the backbone of a trained detector for other code: torchvision, timm, detectron2,

The logic, the examples and the flags: resnext_det/commands/export.py (also `resnext-det export`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
