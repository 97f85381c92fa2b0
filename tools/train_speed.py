#!/usr/bin/env python
"""The demo's CPU training: speed of each setting, runs side by side vs one after another, loss
curves against fp32, and one run with its AP (benchmarks/training.py).

Examples::

    # seconds per iteration of fp32 / channels_last / bf16 / both, interleaved (one thread: the
    # process CPU time per iteration is the time on a quiet core)
    python tools/train_speed.py settings --threads 1 --output docs/benchmarks/demo_train_settings

    # 2 runs three ways: as the first version trained (fp32 NCHW, one after another, all
    # threads), the defaults one after another, the defaults side by side with 1 thread each
    python tools/train_speed.py parallel --iters 150 --rounds 3 \\
        --output docs/benchmarks/demo_parallel

    # loss curves, fp32 vs the defaults, seeds 0 and 1, 300 iterations
    python tools/train_speed.py losses --iters 300 --output docs/benchmarks/demo_losses

    # one run of a schedule and its AP on the generated val split
    python tools/train_speed.py schedule --config configs/demo/faster_rcnn_R_demo.yaml \\
        --output docs/benchmarks/demo_schedule_R
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import load_average, quiet_verdict  # noqa: E402
from benchmarks.training import (  # noqa: E402
    TRAIN_SETTINGS,
    loss_curves,
    time_parallel_runs,
    time_training_settings,
    train_and_evaluate,
)
from resnext_det.io import write_json_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["settings", "parallel", "losses", "schedule"])
    p.add_argument("--config", default="configs/demo/faster_rcnn_X_demo.yaml")
    p.add_argument("--data", default="output/speed/data", help="the generated set (made if absent)")
    p.add_argument("--work", default="output/speed", help="training outputs")
    p.add_argument("--settings", nargs="+", choices=list(TRAIN_SETTINGS))
    p.add_argument("--setting", default="channels_last+bf16", choices=list(TRAIN_SETTINGS))
    p.add_argument("--ims", type=int, help="SOLVER.IMS_PER_BATCH (default: the config's)")
    p.add_argument("--iters", type=int, help="SOLVER.MAX_ITER (schedule compressed to it)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, help="settings: every setting's thread count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--output", help="write OUTPUT.json")
    a = p.parse_args(argv)
    before = load_average()
    work = Path(a.work) / a.what
    if a.what == "settings":
        rep = time_training_settings(
            a.config,
            a.data,
            work,
            rounds=a.rounds,
            ims_per_batch=a.ims,
            threads=a.threads,
            **({"settings": a.settings} if a.settings else {}),
        )
        summary = [
            {k: r[k] for k in ("setting", "s_per_iter_median", "ratio_to_first")}
            | {k: r[k] for k in ("cpu_s_per_iter_median", "cpu_ratio_to_first")}
            | {k: round(r[k], 4) for k in ("data_time_share", "hook_time_share")}
            for r in rep["results"]
        ]
    elif a.what == "parallel":
        rep = time_parallel_runs(
            a.config, a.data, work, rounds=a.rounds, ims_per_batch=a.ims, max_iter=a.iters or 30
        )
        keys = ("median_s", "cpu_median_s", "seconds_per_run", "parallel_over_sequential",
                "parallel_over_first_version")  # fmt: skip
        summary = {k: rep[k] for k in keys}
    elif a.what == "losses":
        rep = loss_curves(
            a.config,
            a.data,
            work,
            max_iter=a.iters or 300,
            ims_per_batch=a.ims,
            seeds=a.seeds,
            **({"settings": a.settings} if a.settings else {}),
        )
        summary = [
            {
                "setting": c["setting"],
                "seed": c["seed"],
                "first10": sum(c["losses"][:10]) / 10,
                "last50": sum(c["losses"][-50:]) / len(c["losses"][-50:]),
            }
            for c in rep["curves"]
        ]
    else:
        rep = train_and_evaluate(
            a.config,
            a.data,
            work / Path(a.config).stem / f"{a.setting}_s{a.seed}_{a.iters}",
            setting=a.setting,
            max_iter=a.iters,
            ims_per_batch=a.ims,
            seed=a.seed,
            threads=a.threads,
        )
        keys = ("seconds", "cpu_seconds", "max_iter", "ims_per_batch", "threads")
        summary = {k: rep[k] for k in keys}
        summary["AP50"], summary["AP"] = rep["bbox"]["AP50"], rep["bbox"]["AP"]
    loads = [before, load_average()]
    rep["load_average_before"], rep["load_average_after"] = loads
    # The run's own threads load the machine too: every core for two runs side by side or
    # one run on all threads, else the one thread asked for.
    cores = os.cpu_count() or 1
    own = a.threads if a.threads and a.what in ("settings", "schedule") else cores
    rep["quiet"] = quiet_verdict(loads, own_threads=own)
    rep["command"] = "python tools/train_speed.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if a.output:
        write_json_atomic(f"{a.output}.json", rep, indent=1)
    print(json.dumps({"summary": summary, "load": loads, "quiet": rep["quiet"]["quiet"]}, indent=1))
    return rep


if __name__ == "__main__":
    main()
