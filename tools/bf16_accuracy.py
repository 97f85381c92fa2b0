#!/usr/bin/env python
"""bf16 against fp32 on a trained detector (:mod:`benchmarks.bf16_accuracy`): trains the demo's
short schedule (one run per model; reused when OUT already has it), evaluates each model on its
val split in fp32 and in bf16, writes OUT/bf16_accuracy.json and .md.

Example::

    python tools/bf16_accuracy.py --output output/bf16_accuracy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bf16_accuracy import bf16_accuracy, bf16_accuracy_markdown  # noqa: E402
from resnext_det.io import write_json_atomic, write_text_atomic  # noqa: E402
from resnext_det.runtime import configure_process  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output", default="output/bf16_accuracy", help="a folder")
    p.add_argument("--seed", type=int, default=0, help="the demo data set's seed")
    p.add_argument(
        "--schedule",
        default="short",
        choices=["short", "smoke"],
        help="the demo's schedule: short (the figures) or smoke (checks the script)",
    )
    args = p.parse_args(argv)
    configure_process(quiet=True)
    report = bf16_accuracy(args.output, seed=args.seed, schedule=args.schedule)
    out = Path(args.output)
    write_json_atomic(out / "bf16_accuracy.json", report, indent=1)
    text = bf16_accuracy_markdown(report)
    write_text_atomic(out / "bf16_accuracy.md", text)
    print(text)
    return report


if __name__ == "__main__":
    main()
