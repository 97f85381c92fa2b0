#!/usr/bin/env python
"""Where the project detector's time goes, fp32 and bf16 (:mod:`benchmarks.bf16_account`): the
backbone forward against the machine's measured peak, each kind of convolution's share, and a
torch.profiler account by operator of one whole call. Writes OUTPUT.json and OUTPUT.md.

Example (a quiet machine)::

    python tools/bf16_account.py --model X-101-32x8d --output docs/benchmarks/bf16_account_x101
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bf16_account import account, account_markdown  # noqa: E402
from benchmarks.settings import BENCH_MODELS  # noqa: E402
from resnext_det.io import write_json_atomic, write_text_atomic  # noqa: E402
from resnext_det.runtime import configure_process  # noqa: E402

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "data" / "raccoon" / "images"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="X-101-32x8d", choices=list(BENCH_MODELS))
    p.add_argument("--image", default=str(RACCOON / "raccoon-1.jpg"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--short-side", type=int, default=800, help="less only for a smoke run")
    p.add_argument("--output", default="bf16_account")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    configure_process(num_threads=args.threads or 0, quiet=not args.verbose)
    report = account(
        model_name=args.model, image=args.image, rounds=args.rounds, threads=args.threads,
        short_side=args.short_side,
        verbose=args.verbose,
    )  # fmt: skip
    write_json_atomic(f"{args.output}.json", report, indent=1)
    text = account_markdown(report)
    write_text_atomic(f"{args.output}.md", text)
    print(text)
    return report


if __name__ == "__main__":
    main()
