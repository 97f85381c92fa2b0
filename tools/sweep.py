#!/usr/bin/env python3
"""The paper's experiment (`make sweep`): error against cardinality at equal complexity, several
training runs per C, every C compared with C = 1. See resnext_det/commands/sweep.py and
docs/sweep.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
