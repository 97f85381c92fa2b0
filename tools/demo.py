#!/usr/bin/env python3
"""The embedded default (`make demo`): generated data -> several training runs of R and X Faster
R-CNN on the CPU -> compare AP/AP@0.5 with intervals over images and runs -> export the ResNeXt
backbone. See resnext_det/demo.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from resnext_det.commands.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
