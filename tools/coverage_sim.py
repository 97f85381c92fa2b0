#!/usr/bin/env python
"""Measure the coverage of the comparison's intervals on simulated detectors (docs/statistics.md).

    .venv/bin/python tools/coverage_sim.py                      # the figures in the docs
    .venv/bin/python tools/coverage_sim.py --repetitions 50     # quicker, noisier
    .venv/bin/python tools/coverage_sim.py --timing 5000 1000   # time the bootstrap instead

Needs a checkout: the simulation lives in tests/support/ (test support, not the package).
Prints one JSON object per setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.simulate import (  # noqa: E402
    Setting,
    benchmark_bootstrap,
    per_model_coverage,
    simulate,
    simulate_family,
)

# The settings of docs/statistics.md: run noise larger than image noise (as in the demo),
# balanced, and none; each with equal detectors (coverage of 0) and a better one (power).
SETTINGS = {
    "run-dominated, equal": Setting(run_sd=0.06),
    "run-dominated, better": Setting(run_sd=0.06, margin=0.25),
    "balanced, equal": Setting(run_sd=0.03),
    "balanced, better": Setting(run_sd=0.03, margin=0.12),
    "no run noise, equal": Setting(run_sd=0.0),
    "1 vs 1 runs, equal": Setting(run_sd=0.06, runs=(1, 1)),
    "5 vs 3 runs, equal": Setting(run_sd=0.06, runs=(5, 3)),
}
# Families (resnext-det sweep: every C against C = 1, Bonferroni): equal detectors, 3 runs each;
# 2 others as in `make sweep` (C = 4, 8), 4 as in the paper's sweep (C = 2, 4, 8, 32).
FAMILIES = {
    "family of 2 vs one baseline, equal": (Setting(run_sd=0.06), 2),
    "family of 4 vs one baseline, equal": (Setting(run_sd=0.06), 4),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repetitions", type=int, default=400, help="comparisons per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="run only the settings whose name contains this text")
    p.add_argument(
        "--timing", type=int, nargs=2, metavar=("IMAGES", "RESAMPLES"), help="time the bootstrap"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    machine = {"cpu": platform.processor() or platform.machine(), "load": os.getloadavg()}
    if args.timing:
        print(json.dumps({**benchmark_bootstrap(*args.timing, seed=args.seed), **machine}))
        return 0
    start = time.perf_counter()
    for i, (name, setting) in enumerate(SETTINGS.items()):
        if args.only and args.only not in name:
            continue
        r = simulate(setting, args.repetitions, seed=args.seed + i)
        print(json.dumps({"name": name, **r}), flush=True)
    for i, (name, (setting, others)) in enumerate(FAMILIES.items()):
        if args.only and args.only not in name:
            continue
        r = simulate_family(setting, others, args.repetitions, seed=args.seed + 50 + i)
        print(json.dumps({"name": name, **r}), flush=True)
    if not args.only or "per-model" in args.only:
        r = per_model_coverage(args.repetitions, seed=args.seed + 100)
        print(json.dumps({"name": "per-model AP interval, 1 run", **r}), flush=True)
    print(
        json.dumps({"total_s": time.perf_counter() - start, **machine, "end_load": os.getloadavg()})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
