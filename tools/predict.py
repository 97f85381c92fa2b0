#!/usr/bin/env python
"""Draw a trained detector's predictions on images and write COCO results.

The logic, the examples and the flags: resnext_det/commands/predict.py
(also `resnext-det predict`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
