#!/usr/bin/env python
"""bf16 against fp32 on a trained detector (:mod:`benchmarks.bf16_accuracy`): trains the demo's
short schedule (one run per model; reused when OUT already has it), evaluates each model on its
val split in fp32 and in bf16, writes OUT/bf16_accuracy.json and .md.

Or, with ``--runs``, runs already trained (a sweep's cells on real photos). Examples::

    python tools/bf16_accuracy.py --output output/bf16_accuracy
    python tools/bf16_accuracy.py --output output/bf16_raccoon --dataset raccoon_val \
        --runs output/sweep_raccoon/sweep/*/seed_*
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bf16_accuracy import (  # noqa: E402
    bf16_accuracy,
    bf16_accuracy_markdown,
    bf16_accuracy_of_runs,
)
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
    p.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN_DIR",
        help="trained runs instead of the demo's (each a folder with config.yaml and "
        "model_final.pth, e.g. a sweep's DIR/<variant>/seed_<k>); needs --dataset",
    )
    p.add_argument("--dataset", help="with --runs: the registered test set to evaluate on")
    args = p.parse_args(argv)
    if bool(args.runs) != bool(args.dataset):
        p.error("--runs and --dataset go together")
    configure_process(quiet=True)
    if args.runs:
        report = bf16_accuracy_of_runs(args.runs, args.dataset, args.output)
    else:
        report = bf16_accuracy(args.output, seed=args.seed, schedule=args.schedule)
    out = Path(args.output)
    write_json_atomic(out / "bf16_accuracy.json", report, indent=1)
    text = bf16_accuracy_markdown(report)
    write_text_atomic(out / "bf16_accuracy.md", text)
    print(text)
    return report


if __name__ == "__main__":
    main()
