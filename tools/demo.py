#!/usr/bin/env python3
"""The embedded default (`make demo`): generated data -> train R and X Faster R-CNN on the CPU ->
compare AP/AP@0.5 side by side -> export the ResNeXt backbone. See resnext_det/demo.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnext_det.demo import run_demo  # noqa: E402
from resnext_det.evaluation.report import format_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/demo", help="output directory")
    parser.add_argument(
        "--schedule",
        choices=("full", "smoke"),
        default="full",
        help="smoke: every step with a few iterations (seconds)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data set")
    args = parser.parse_args()
    result = run_demo(args.out, schedule=args.schedule, seed=args.seed)
    print("\n" + format_table(result.comparison))
    for name, seconds in result.train_seconds.items():
        print(f"training {name}: {seconds / 60:.1f} min")
    print(f"comparison: {result.out_dir / 'comparison'}/comparison.{{md,json,csv,png}}")
    for path in result.exports:
        print(f"exported: {path} (+ {path.name}.json)")


if __name__ == "__main__":
    main()
