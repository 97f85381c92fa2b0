"""``make demo`` / ``tools/demo.py`` / ``resnext-det demo``: the embedded default, end to end.

Generated data -> several training runs of a ResNet and a ResNeXt Faster R-CNN of equal complexity
on the CPU -> their comparison, with intervals over test images and training runs -> the ResNeXt
backbone exported. See :mod:`resnext_det.demo`.
"""

from __future__ import annotations

import argparse

from .common import command


@command("demo")
def main(argv: list[str] | None = None) -> int:
    from ..demo import RUNS, SCHEDULES, run_demo
    from ..evaluation.report import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="output/demo", help="output directory")
    parser.add_argument(
        "--schedule",
        choices=("full", *SCHEDULES),
        default="full",
        help="short: a smaller set and schedule that still learns (about a minute); smoke: every "
        "step with a few iterations (seconds)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data set")
    parser.add_argument(
        "--verbose", action="store_true", help="DEBUG lines on the console too (model, tables)"
    )
    parser.add_argument("--runs", type=int, default=RUNS, help="training runs per model")
    parser.add_argument(
        "--parallel", type=int, default=None, help="runs at once (default: the machine's cores)"
    )
    args = parser.parse_args(argv)
    from detectron2.utils.logger import setup_logger

    from ..runtime import configure_process, set_console_verbosity

    setup_logger(name="detectron2")
    setup_logger(name="resnext_det")
    set_console_verbosity(args.verbose)
    # Runs trained in this process (--parallel 1) and the comparison keep freed memory, as
    # CPU_TRAINING.KEEP_FREED_MEMORY and MODEL.RESNEXT.KEEP_FREED_MEMORY ask by default.
    configure_process(keep_freed_memory=True)
    result = run_demo(
        args.out,
        schedule=args.schedule,
        seed=args.seed,
        runs=args.runs,
        parallel=args.parallel,
    )
    print("\n" + format_table(result.comparison))
    total = sum(len(paths) for paths in result.runs.values())
    print(f"training: {total} runs in {result.train_seconds / 60:.1f} min")
    print(f"comparison: {result.out_dir / 'comparison'}/comparison.{{md,json,csv,png}}")
    for path in result.exports:
        print(f"exported: {path} (+ {path.name}.json)")
    return 0
