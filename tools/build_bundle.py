#!/usr/bin/env python3
"""Build (and check) an offline wheelhouse for another Python/platform; see resnext_det.bundle.

tools/build_bundle.py --python-version 3.12 --out dist/wheelhouse-py3.12
# on the target, with its own torch/torchvision already installed:
pip install --no-index --find-links wheelhouse-py3.12 resnext-det detectron2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnext_det.bundle import DEFAULT_PLATFORMS, build_wheelhouse, verify_wheelhouse  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--platform", action="append", help="wheel platform tags (repeatable)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--verify-only", action="store_true", help="check an existing wheelhouse")
    args = parser.parse_args()
    platforms = tuple(args.platform or DEFAULT_PLATFORMS)
    if not args.verify_only:
        build_wheelhouse(args.out, python_version=args.python_version, platforms=platforms)
    names = verify_wheelhouse(args.out, python_version=args.python_version, platforms=platforms)
    print(
        f"{args.out}: {len(names)} distributions for Python {args.python_version} "
        f"({platforms[0]}), torch/torchvision excluded:\n  " + " ".join(names)
    )
    print(
        f"install on the target: pip install --no-index --find-links {args.out} "
        "resnext-det detectron2"
    )


if __name__ == "__main__":
    main()
