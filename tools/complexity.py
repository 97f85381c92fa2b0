#!/usr/bin/env python
"""Parameters and GFLOPs of backbones, as the paper counts them.

The logic, the examples and the flags: resnext_det/commands/complexity.py
(also `resnext-det complexity`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.complexity import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
