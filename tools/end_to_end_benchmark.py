#!/usr/bin/env python
"""Time the whole detector as its users run it: detectron2's DefaultPredictor against the
project's Predictor (fp32-equal and bf16), each side in its own process started with its tools'
settings, in interleaved rounds on a folder of photos; writes OUTPUT.json and OUTPUT.md
(:mod:`benchmarks.end_to_end`).

Example (the figures of docs/benchmarks.md, "End to end"; a quiet machine)::

    python tools/end_to_end_benchmark.py --models X-50-32x4d X-101-32x8d \\
        --images ../shared/data/raccoon/images --num-images 8 --rounds 5 \\
        --output docs/benchmarks/end_to_end
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.end_to_end import SIDES, run_end_to_end, write_end_to_end  # noqa: E402
from benchmarks.settings import BENCH_MODELS, BenchmarkInputError  # noqa: E402
from resnext_det.runtime import configure_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models", nargs="+", default=["X-50-32x4d", "X-101-32x8d"], choices=list(BENCH_MODELS)
    )
    p.add_argument(
        "--images",
        default=str(REPO.parent / "shared" / "data" / "raccoon" / "images"),
        help="a folder of .jpg/.png photos (the first --num-images, sorted)",
    )
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="timed interleaved rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes of the folder per side")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every side")
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    p.add_argument(
        "--short-side",
        type=int,
        default=800,
        help="the predictors' test size (800: the configs'; less for a smoke run)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="end_to_end", help="write OUTPUT.json and OUTPUT.md")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: must be a positive integer; got {args.threads}")
    configure_process(num_threads=args.threads or 0, quiet=True)
    try:
        report = run_end_to_end(
            models=args.models,
            images=args.images,
            num_images=args.num_images,
            rounds=args.rounds,
            warmup=args.warmup,
            threads=args.threads,
            short_side=args.short_side,
            sides=args.sides,
            seed=args.seed,
        )
    except BenchmarkInputError as exc:
        parser.error(f"--{exc.field}: {exc.detail}")
    command = "python tools/end_to_end_benchmark.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    write_end_to_end(report, args.output, command)
    print(Path(f"{args.output}.md").read_text())
    return report


if __name__ == "__main__":
    main()
