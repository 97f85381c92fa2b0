"""``resnext-det sweep`` / ``tools/sweep.py``: the paper's experiment, error against cardinality at
equal complexity, as one command (:mod:`resnext_det.sweep`).

    resnext-det sweep --config-file CFG --cardinalities 1 2 4 8 32 --runs 3 --out DIR \\
        [KEY VALUE ...]

For each C the template's width d at CFG's depth and widths (C = 1 is the ResNet), --runs
training runs of each (seeds 0..N-1) in one pool of --parallel one-thread workers, each run
evaluated on CFG's test set, every C compared with C = 1 (intervals over test images and training
runs, Bonferroni over the C's), DIR/sweep.{json,md,png}. Run again, it trains and evaluates only
what is not done. --also-deeper / --also-wider add Table 4's 2x-complexity ResNets beside twice
the largest C.

Beyond one machine, one cell per job into the same DIR, then the report from what is done:

    resnext-det sweep --config-file CFG --cardinalities 1 2 4 8 32 --runs 5 --out DIR \\
        --cardinality 8 --seed $SLURM_ARRAY_TASK_ID MODEL.DEVICE cuda
    resnext-det sweep --out DIR --report-only

docs/sweep.md says what the curve can and cannot show.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from detectron2.utils.logger import setup_logger

from ..complexity import PAPER_CARDINALITIES
from ..demo import RUNS
from ..errors import ConfigError
from ..evaluation.bootstrap import MIN_RESAMPLES
from ..runtime import set_console_verbosity
from ..training.seeds import SeedRunsInterrupted
from .common import (
    command,
    configure_inference_process,
    configure_training_process,
    error_line,
)

__all__ = ["argument_parser", "main"]

# The library's argument names (SweepError.argument) as this command's flags.
FLAGS = {
    "cardinalities": "--cardinalities",
    "runs": "--runs",
    "out_dir": "--out",
    "config": "--config-file",
    "also_deeper": "--also-deeper",
    "also_wider": "--also-wider",
    "seed": "--seed",
    "bootstrap": "--bootstrap",
}


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resnext-det sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config-file", metavar="CFG", help="a ResNet/ResNeXt detector config (yaml)")
    p.add_argument(
        "--cardinalities",
        type=int,
        nargs="+",
        default=list(PAPER_CARDINALITIES),
        metavar="C",
        help="the cardinalities, 1 among them (default: the paper's "
        f"{' '.join(map(str, PAPER_CARDINALITIES))})",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=RUNS,
        metavar="N",
        help=f"training runs per variant, seeds 0..N-1 (default {RUNS}; 1 leaves run-to-run "
        "variation unmeasured, and the report says so)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="J",
        help="runs at once, one thread each (default: the machine's cores; 1: one after another "
        "in this process)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the sweep's folder")
    p.add_argument(
        "--also-deeper",
        action="store_true",
        help="add the ResNet of the depth with twice the GFLOPs, and twice the largest C at its d",
    )
    p.add_argument(
        "--also-wider",
        action="store_true",
        help="add the ResNet with twice res2's parameters, and twice the largest C at its d",
    )
    p.add_argument(
        "--register",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format data set (repeatable): DATASETS.COCO_REGISTER",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help=f"bootstrap resamples over test images (at least {MIN_RESAMPLES}; default 1000)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="family-wise coverage of the intervals (default 0.95)",
    )
    cell = p.add_argument_group(
        "one cell (a job of a cluster array)", "train and evaluate one run into --out, no report"
    )
    which = cell.add_mutually_exclusive_group()
    which.add_argument("--cardinality", type=int, metavar="C", help="the cell's cardinality")
    which.add_argument(
        "--variant",
        choices=("deeper", "wider", "cardinality_2x"),
        help="a 2x-complexity cell (with --also-deeper/--also-wider)",
    )
    cell.add_argument("--seed", type=int, metavar="K", help="the cell's seed (0..N-1)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only the report, from the cells done in --out (it lists the missing ones); "
        "without --config-file, the sweep's own settings",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="DEBUG lines on the console too (parameter-loading tables); the runs' log.txt have "
        "them either way",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return p


def _plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """The sweep of the command line; with --report-only and no --config-file, DIR's own."""
    from ..config import load_config
    from ..sweep import SETTINGS_FILE, load_settings, plan_sweep

    if args.config_file is None:
        if not args.report_only:
            parser.error("--config-file is required (it may be left out with --report-only)")
        stored = load_settings(args.out)
        if stored is None:
            raise ConfigError(f"--out: {args.out!r} holds no sweep; give --config-file")
        from detectron2.config import CfgNode

        cfg = load_config()
        cfg.merge_from_other_cfg(CfgNode(stored["config"]))
        cfg = load_config(None, args.opts, base=cfg)
        args.cardinalities, args.runs = stored["cardinalities"], stored["runs"]
        args.also_deeper, args.also_wider = stored["also_deeper"], stored["also_wider"]
    else:
        cfg = load_config(args.config_file, args.opts)
    for entry in args.register:
        cfg.DATASETS.COCO_REGISTER.append(list(entry))
    return plan_sweep(
        cfg,
        args.out,
        args.cardinalities,
        args.runs,
        also_deeper=args.also_deeper,
        also_wider=args.also_wider,
        config_file=args.config_file or os.path.join(args.out, SETTINGS_FILE),
    )


def _cell(plan: Any, args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    if args.cardinality is None and args.variant is None:
        if args.seed is not None:
            parser.error("--seed needs --cardinality C or --variant NAME (one cell)")
        return None
    if args.seed is None:
        parser.error("--cardinality/--variant need --seed K (one cell)")
    if args.report_only:
        parser.error("--report-only builds the report; it trains no cell")
    if args.cardinality is not None:
        match = [v for v in plan.variants if v.kind == "cardinality"]
        match = [v for v in match if v.spec.cardinality == args.cardinality]
        if not match:
            raise ConfigError(
                f"--cardinality: {args.cardinality} is not one of --cardinalities "
                f"{' '.join(map(str, plan.cardinalities))}"
            )
    else:
        match = [v for v in plan.variants if v.kind == args.variant]
        if not match:
            raise ConfigError(f"--variant: {args.variant} needs --also-deeper or --also-wider")
    return match[0]


@command("resnext-det sweep")
def main(argv: list[str] | None = None) -> int:
    from ..sweep import SweepError, claim_out_dir, run_cell, run_sweep, write_report

    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.bootstrap < MIN_RESAMPLES:
        parser.error(f"--bootstrap must be at least {MIN_RESAMPLES}; got {args.bootstrap}")
    if args.parallel is not None and args.parallel < 1:
        parser.error(f"--parallel must be a positive integer; got {args.parallel}")
    setup_logger(name="detectron2")
    setup_logger(name="resnext_det")
    set_console_verbosity(args.verbose)
    progress = not args.no_progress
    try:
        plan = _plan(args, parser)
        variant = _cell(plan, args, parser)
        if args.report_only:
            claim_out_dir(plan, create=False)
            report = write_report(
                plan, bootstrap=args.bootstrap, confidence=args.confidence, progress=progress
            )
        elif variant is not None:
            configure_training_process(plan.config)  # this process trains the cell
            inference = configure_inference_process(plan.config)
            path = run_cell(plan, variant, args.seed, inference=inference, progress=progress)
            print(f"cell {variant.name}/seed_{args.seed}: {path}")
            return 0
        else:
            if args.parallel == 1:
                configure_training_process(plan.config)  # the runs train in this process
            result = run_sweep(
                plan,
                parallel=args.parallel,
                bootstrap=args.bootstrap,
                confidence=args.confidence,
                inference=configure_inference_process(plan.config),
                progress=progress,
            )
            report = result.report
            print(
                f"trained now: {len(result.trained)} runs, evaluated now: "
                f"{len(result.evaluated)}, of {len(plan.cells())} cells"
            )
    except SweepError as exc:
        flag = FLAGS.get(exc.argument, exc.argument)
        raise ConfigError(f"{flag}: {exc.message}") from None
    except SeedRunsInterrupted as exc:  # what finished, what stopped, how to go on
        print(f"resnext-det sweep: {error_line(exc)}", file=sys.stderr)
        return exc.exit_status  # 130 (SIGINT) or 143 (SIGTERM)
    print("\nWhat the curve shows:\n" + "\n".join(f"- {s}" for s in report["summary"]["shows"]))
    not_shown = report["summary"]["does_not_show"]
    print("What it does not show:\n" + "\n".join(f"- {s}" for s in not_shown))
    if report["missing"]:
        print(f"missing cells: {len(report['missing'])} (listed in sweep.md)")
    print("report: " + ", ".join(report["outputs"][:3]))
    return 0
