#!/usr/bin/env python3
"""Build (and check) an offline wheelhouse for another Python/platform; see tools/bundle.py.

tools/build_bundle.py --python-version 3.12 --out dist/wheelhouse-py3.12
# on the target, with its own torch/torchvision already installed:
pip install --no-index --find-links wheelhouse-py3.12 resnext-det detectron2

tools/build_bundle.py --python-version 3.12 --slim --out .whl      # make gpu-wheels
# on the GPU machine: the wheels it lacks, one path a line (what tools/gpu_check.sh installs)
python3 tools/build_bundle.py --plan .whl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle import (  # noqa: E402
    DEFAULT_PLATFORMS,
    PROVIDED_ON_GPU_MACHINE,
    build_wheelhouse,
    plan_install,
    verify_wheelhouse,
)


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.whl")) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--platform", action="append", help="wheel platform tags (repeatable)")
    parser.add_argument("--out", type=Path, help="the wheelhouse to build (or check)")
    parser.add_argument("--verify-only", action="store_true", help="check an existing wheelhouse")
    parser.add_argument(
        "--slim",
        action="store_true",
        help="leave out what the lent GPU machine has (bundle.PROVIDED_ON_GPU_MACHINE)",
    )
    parser.add_argument(
        "--plan",
        type=Path,
        metavar="WHEELHOUSE",
        help="on the target: print the wheels this Python lacks, one path a line (the reasons "
        "go to stderr); exit 1 naming what neither it nor the wheelhouse has",
    )
    args = parser.parse_args()
    if args.plan:
        try:
            plan = plan_install(args.plan)
        except RuntimeError as exc:
            print(f"build_bundle.py --plan: {exc}", file=sys.stderr)
            return 1
        print(plan.summary(), file=sys.stderr)
        for wheel in plan.install:
            print(wheel)
        return 0
    if args.out is None:
        parser.error("--out is required (unless --plan)")
    platforms = tuple(args.platform or DEFAULT_PLATFORMS)
    provided = PROVIDED_ON_GPU_MACHINE if args.slim else frozenset()
    if not args.verify_only:
        build_wheelhouse(
            args.out, python_version=args.python_version, platforms=platforms, provided=provided
        )
    names = verify_wheelhouse(
        args.out, python_version=args.python_version, platforms=platforms, provided=provided
    )
    left_out = " and what the GPU machine has" if args.slim else ""
    print(
        f"{args.out}: {len(names)} distributions, {_size_mib(args.out):.1f} MiB, for Python "
        f"{args.python_version} ({platforms[0]}), torch/torchvision{left_out} excluded:\n  "
        + " ".join(names)
    )
    if not args.slim:
        print(
            f"install on the target: pip install --no-index --find-links {args.out} "
            "resnext-det detectron2"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
