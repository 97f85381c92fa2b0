#!/usr/bin/env python
"""Time this project's ResNeXt settings against detectron2's built-in ResNet (and torchvision's).

Backbone forward, backbone forward+backward, a Faster R-CNN training iteration and inference, on
the same inputs and weights, in interleaved rounds; writes json, a markdown table and a plot.

Examples::

    # The CPU figures of docs/benchmarks.md (backbone forward at detection size):
    python tools/benchmark.py --models X-50-32x4d X-101-32x8d --tasks forward --repeats 7 \\
        --output docs/benchmarks/cpu_forward

    # Everything, small images, a few minutes on a CPU:
    python tools/benchmark.py --models R-50 X-50-32x4d --tasks forward backward train inference \\
        --size 320 480 --repeats 3 --output /tmp/bench

    # The training-iteration target (Faster R-CNN X-50-32x4d-FPN, 2 images at 512x640):
    python tools/benchmark.py --models X-50-32x4d --tasks train --size 512 640 --batch 2 \
        --settings detectron2 channels_last amp channels_last+amp cpu_train_defaults \
        --repeats 7 --output docs/benchmarks/cpu_train_512x640

    # On a GPU:
    python tools/benchmark.py --device cuda --models X-101-32x8d --tasks train --batch 2 \\
        --settings detectron2 channels_last amp channels_last+amp --output docs/benchmarks/gpu
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (  # noqa: E402
    BENCH_MODELS,
    DEFAULT_SETTINGS,
    MEMORY_MODES,
    SETTINGS,
    TASKS,
    BenchmarkInputError,
    run_benchmark,
    write_benchmark,
)
from resnext_det.runtime import configure_process  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["X-50-32x4d"], choices=list(BENCH_MODELS))
    p.add_argument("--tasks", nargs="+", default=["forward"], choices=list(TASKS))
    p.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        choices=list(SETTINGS),
        help="ways to run each model (the detectron2 baseline is always included)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--size", nargs=2, type=int, default=[800, 1216], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--repeats", type=int, default=5, help="timed interleaved rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each variant first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time the statistics are of (both are recorded in the json); 'cpu' with --threads 1 "
        "is the least disturbed by other jobs on a shared machine",
    )
    p.add_argument(
        "--output",
        default="benchmark",
        help="write OUTPUT.json, OUTPUT.md and OUTPUT.png (each atomically)",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--no-peak",
        action="store_true",
        help="skip the machine's peak timed in every round (no fraction-of-peak column)",
    )
    p.add_argument(
        "--memory",
        choices=MEMORY_MODES,
        default="as-shipped",
        help="what the allocator does with freed memory (resnext_det.runtime.keep_freed_memory, "
        "a process setting): as-shipped (default: the project's CPU training defaults and folded "
        "inference in a child process started with resnext_det.runtime.KEEP_FREED_MEMORY_ENV, "
        "as the project's tools run; the rest, detectron2 included, here with the default), "
        "returned (the default for every variant) or kept (for every variant, the baseline "
        "included; in a child process started with that setting)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show what the libraries print to the console (the profiler's own lines, "
        "third-party notices); without it, progress and results only",
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: must be a positive integer; got {args.threads}")
    # This command's process: its threads and notices. Its allocator stays as it was started:
    # the variants that need freed memory kept run in a child started with that setting.
    configure_process(num_threads=args.threads or 0, quiet=not args.verbose)
    try:
        report = run_benchmark(
            models=args.models,
            tasks=args.tasks,
            settings=args.settings,
            device=args.device,
            size=tuple(args.size),
            batch=args.batch,
            repeats=args.repeats,
            warmup=args.warmup,
            seed=args.seed,
            clock=args.clock,
            peak=not args.no_peak,
            memory=args.memory,
            verbose=args.verbose,
        )
    except BenchmarkInputError as exc:
        parser.error(f"--{exc.field}: {exc.detail}")
    command = "python tools/benchmark.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    out = args.output
    write_benchmark(
        report,
        f"{out}.json",
        f"{out}.md",
        None if args.no_plot else f"{out}.png",
        command=command,
    )
    print(Path(f"{out}.md").read_text())
    return report


if __name__ == "__main__":
    main()
