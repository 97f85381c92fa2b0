#!/usr/bin/env python
"""Train or evaluate a detector from a LazyConfig .py file.

The logic, the examples and the flags: resnext_det/commands/lazy_train.py
(also `resnext-det lazy-train`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.lazy_train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
