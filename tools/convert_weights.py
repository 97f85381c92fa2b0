#!/usr/bin/env python
"""Convert ImageNet/detector weights of any supported layout into a detectron2-ready file.

The logic, the examples and the flags: resnext_det/commands/convert.py (also `resnext-det convert`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
