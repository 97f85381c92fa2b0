"""The cardinality sweep (issue 30): the paper's experiment as one command.

One tiny sweep (C = 1, 2, 4 at the tiny config's widths: d = 4, 2, 1; 2 runs each of 3
iterations, one after another in this process) is trained once for the module; the other tests
read it, copy it, or re-run it. The widths and the complexity are checked against the paper's
Table 2 and torchvision's ResNet, the coverage of the family-wise intervals in the simulation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from PIL import Image
from support.simulate import Setting, simulate_family

from resnext_det.commands.sweep import main
from resnext_det.config import load_config
from resnext_det.evaluation.intervals import bonferroni_confidence
from resnext_det.io import TMP_MARK
from resnext_det.sweep import (
    OUTPUT_FILES,
    SweepError,
    _complexity,
    plan_sweep,
    run_sweep,
    write_report,
)

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
X50 = REPO / "configs" / "faster_rcnn_X_50_32x4d_FPN_1x.yaml"
SCHEDULE = [
    "SOLVER.MAX_ITER",
    "3",
    "SOLVER.CHECKPOINT_PERIOD",
    "3",
    "CPU_TRAINING.NUM_THREADS",
    "1",
]
CARDINALITIES = ["1", "2", "4"]
NAMES = ["R-26", "X-26-2x2d", "X-26-4x1d"]  # the tiny config's template: d = 4, 2, 1


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def _args(ds, out: Path, *extra: str, cardinalities=CARDINALITIES, runs: int = 2) -> list[str]:
    return [
        "--config-file", str(TINY), "--cardinalities", *cardinalities, "--runs", str(runs),
        "--out", str(out), "--bootstrap", "200", "--no-progress",
        "--register", "synthetic_train", str(ds.train_json), str(ds.train_image_root),
        "--register", "synthetic_val", str(ds.val_json), str(ds.val_image_root),
        *extra, *SCHEDULE,
    ]  # fmt: skip


def _plan(ds, out: Path, cardinalities=(1, 2, 4), runs: int = 2):
    cfg = load_config(TINY, SCHEDULE)
    cfg.DATASETS.COCO_REGISTER = [
        ["synthetic_train", str(ds.train_json), str(ds.train_image_root)],
        ["synthetic_val", str(ds.val_json), str(ds.val_image_root)],
    ]
    return plan_sweep(cfg, out, cardinalities, runs, config_file=str(TINY))


@pytest.fixture(scope="module")
def swept(synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "out"
    assert main(_args(synthetic, out, "--parallel", "1")) == 0
    return out


def _report(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def test_sweep_writes_the_report_with_every_field(swept):
    report = _report(swept)
    assert [v["name"] for v in report["variants"]] == NAMES
    assert [(v["cardinality"], v["width_per_group"]) for v in report["variants"]] == [
        (1, 4),
        (2, 2),
        (4, 1),
    ]
    for v in report["variants"]:
        assert {"params", "gflops", "params_vs_baseline", "gflops_vs_baseline"} <= set(v)
        assert [r["seed"] for r in v["runs"]] == [0, 1]
        for r in v["runs"]:
            assert Path(r["weights"]) == swept / v["name"] / f"seed_{r['seed']}" / "model_final.pth"
            assert Path(r["weights"]).is_file()
        for key in ("AP", "AP50"):
            assert v[key] == pytest.approx(sum(r[key] for r in v["runs"]) / 2)
    base, *others = report["variants"]
    assert base["delta"] is None and base["params_vs_baseline"] == 0.0
    for v in others:
        for key in ("AP", "AP50"):
            d = v["delta"][key]
            assert d["value"] == pytest.approx(v[key] - base[key])
            assert d["low"] <= d["value"] <= d["high"]
    # Two comparisons with C = 1: each interval at 1 - 0.05 / 2, and the comparison used it.
    assert report["familywise"]["method"] == "Bonferroni"
    assert report["familywise"]["comparisons"] == 2
    assert report["familywise"]["interval_confidence"] == pytest.approx(0.975)
    assert report["bootstrap"]["confidence"] == pytest.approx(0.975)
    assert report["complete"] and report["missing"] == [] and report["run_to_run_measured"]
    text = (swept / "sweep.md").read_text()
    assert "## What the curve shows" in text and "## What it does not show" in text
    assert "97.50%" in text
    with Image.open(swept / "sweep.png") as image:
        assert image.size[0] >= 1200 and image.size[1] >= 900
    assert not [p for p in swept.iterdir() if TMP_MARK in p.name]  # all renamed, none left over


def test_each_run_ap_is_pycocotools_on_its_results(swept, synthetic):
    """A run's AP in sweep.json is what pycocotools gives its results file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    run = _report(swept)["variants"][1]["runs"][0]
    results = Path(run["weights"]).parent / "evaluation" / "results_X-26-2x2d.json"
    gt = COCO(str(synthetic.val_json))
    dets = json.loads(results.read_text())
    e = COCOeval(gt, gt.loadRes(dets) if dets else COCO(), "bbox")
    e.evaluate(), e.accumulate(), e.summarize()
    assert run["AP"] == pytest.approx(100 * max(e.stats[0], 0), abs=1e-6)
    assert run["AP50"] == pytest.approx(100 * max(e.stats[1], 0), abs=1e-6)


def test_a_finished_sweep_run_again_trains_and_evaluates_nothing(swept, synthetic):
    before = {p: p.stat().st_mtime_ns for p in swept.glob("*/seed_*/model_final.pth")}
    result = run_sweep(_plan(synthetic, swept), parallel=1, bootstrap=200, progress=False)
    assert result.trained == [] and result.evaluated == []
    assert {p: p.stat().st_mtime_ns for p in swept.glob("*/seed_*/model_final.pth")} == before


def test_the_paper_widths_and_equal_complexity_against_torchvision():
    """At ResNeXt-50 the template gives the paper's Table 2 (C = 1, 2, 4, 8, 32 -> d = 64, 40,
    24, 14, 4), the counted parameters are torchvision's ResNet's convolutions, and each d is the
    width whose network comes closest to the ResNet's: equal within the template's rounding."""
    from torchvision.models.resnet import Bottleneck, ResNet

    def torchvision_params(c: int, d: int) -> int:
        net = ResNet(Bottleneck, [3, 4, 6, 3], groups=c, width_per_group=d)
        return sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Conv2d))

    plan = _plan_x50()
    assert [(v.spec.cardinality, v.spec.width_per_group) for v in plan.variants] == [
        (1, 64),
        (2, 40),
        (4, 24),
        (8, 14),
        (32, 4),
    ]
    counted = _complexity(plan)
    resnet = torchvision_params(1, 64)
    for v in plan.variants:
        c, d = v.spec.cardinality, v.spec.width_per_group
        assert counted[v.name]["params"] == torchvision_params(c, d)
        if c > 1:
            off = abs(torchvision_params(c, d) - resnet)
            assert off <= abs(torchvision_params(c, d - 1) - resnet)
            assert off <= abs(torchvision_params(c, d + 1) - resnet)
            assert abs(counted[v.name]["params_vs_baseline"]) < 0.03  # the paper's "~25M"


def _plan_x50(**kwargs):
    cfg = load_config(X50)
    return plan_sweep(cfg, "unused", [1, 2, 4, 8, 32], 1, **kwargs)


def test_table_4_variants_at_twice_the_complexity():
    """--also-deeper/--also-wider at ResNeXt-50: ResNet-101, the 1x99d ResNet (the paper's 1x100d
    rounded to the closest width) and 64x4d, twice the 32x4d."""
    plan = _plan_x50(also_deeper=True, also_wider=True)
    extra = [
        (v.kind, v.spec.depth, v.spec.cardinality, v.spec.width_per_group)
        for v in plan.variants[5:]
    ]
    assert extra == [("deeper", 101, 1, 64), ("wider", 50, 1, 99), ("cardinality_2x", 50, 64, 4)]


GN_WIDTHS = ["MODEL.RESNETS.NORM", "GN", "MODEL.RESNETS.STEM_OUT_CHANNELS", "32",
             "MODEL.RESNETS.RES2_OUT_CHANNELS", "128"]  # fmt: skip


@pytest.mark.parametrize(
    "cardinalities,runs,opts,flag,words",
    [
        (["1", "16"], 2, [], "--cardinalities", "C = 16: the template's width rounds to 0"),
        (["1", "2", "2"], 2, [], "--cardinalities", "2 given twice; give each C once"),
        (["2", "4"], 2, [], "--cardinalities", "must include 1 (the ResNet"),
        # GroupNorm(32) cannot divide C = 2's 2 x 20 = 40 channels at res2 128
        (["1", "2"], 2, GN_WIDTHS, "--cardinalities", "C = 2: MODEL.RESNETS.NORM 'GN'"),
        (["1", "2"], 2, ["MODEL.BACKBONE.NAME", "build_vit_backbone"], "--config-file",
         "MODEL.BACKBONE.NAME must be a ResNet/ResNeXt builder"),
        (["1", "2"], 0, [], "--runs", "must be an integer >= 1; got 0"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_flag(
    synthetic, tmp_path, capsys, cardinalities, runs, opts, flag, words
):
    argv = _args(synthetic, tmp_path / "out", *opts, cardinalities=cardinalities, runs=runs)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"resnext-det sweep: error: {flag}: ") and words in err
    assert not list((tmp_path / "out").glob("*/seed_*"))  # refused before any training


def test_out_holding_another_sweep_is_refused_naming_the_difference(swept, synthetic, capsys):
    argv = _args(synthetic, swept, runs=3)
    argv[argv.index("SOLVER.MAX_ITER") + 1] = "5"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "holds a sweep with other settings" in err
    assert "runs 2 there, 3 here" in err and "SOLVER.MAX_ITER 3 there, 5 here" in err


def test_report_only_lists_a_missing_cell(swept, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(swept, out)
    shutil.rmtree(out / "X-26-2x2d" / "seed_1")
    for name in OUTPUT_FILES:
        (out / name).unlink()
    # The sweep's own settings (config, cardinalities, runs) when no --config-file is given.
    assert main(["--out", str(out), "--report-only", "--bootstrap", "200", "--no-progress"]) == 0
    report = _report(out)
    assert not report["complete"]
    assert [(m["variant"], m["seed"], m["state"]) for m in report["missing"]] == [
        ("X-26-2x2d", 1, "todo")
    ]
    runs = {v["name"]: [r["seed"] for r in v["runs"]] for v in report["variants"]}
    assert runs == {"R-26": [0, 1], "X-26-2x2d": [0], "X-26-4x1d": [0, 1]}
    text = (out / "sweep.md").read_text()
    assert "## Missing cells" in text and "X-26-2x2d seed 1: todo" in text
    assert "missing cells: 1" in capsys.readouterr().out
    # Without any run of C = 1 there is nothing to compare with: refused, naming the cells.
    for seed in (0, 1):
        shutil.rmtree(out / "R-26" / f"seed_{seed}")
    assert main(["--out", str(out), "--report-only", "--bootstrap", "200"]) == 2
    assert "no run of the ResNet (R-26, C = 1) is done" in capsys.readouterr().err


def test_one_run_per_variant_says_run_to_run_variation_is_unmeasured(swept, synthetic, tmp_path):
    out = tmp_path / "one"
    shutil.copytree(swept, out)
    report = write_report(_plan(synthetic, out, runs=1), bootstrap=200, progress=False)
    assert all(len(v["runs"]) == 1 for v in report["variants"])
    assert not report["run_to_run_measured"]
    assert "Run-to-run variation is unmeasured" in (out / "sweep.md").read_text()


def test_one_cell_at_a_time_into_the_same_folder(swept, synthetic, tmp_path, capsys):
    """--cardinality C --seed K (a job of a cluster array): that cell only, trained and
    evaluated into the sweep's layout; the others are not touched."""
    out = tmp_path / "cells"
    assert main(_args(synthetic, out, "--cardinality", "2", "--seed", "1")) == 0
    assert [str(p.relative_to(out)) for p in sorted(out.glob("*/seed_*"))] == ["X-26-2x2d/seed_1"]
    assert (out / "X-26-2x2d" / "seed_1" / "evaluation" / "comparison.json").is_file()
    assert main(_args(synthetic, out, "--cardinality", "8", "--seed", "0")) == 2
    assert "--cardinality: 8 is not one of --cardinalities 1 2 4" in capsys.readouterr().err


def test_plan_refuses_a_single_cardinality_and_names_the_argument():
    cfg = load_config(TINY)
    with pytest.raises(SweepError, match="give C = 1 and at least one more") as info:
        plan_sweep(cfg, "unused", [1], 2)
    assert info.value.argument == "cardinalities"


@pytest.mark.slow  # a subprocess's imports and the rest of the sweep: ~30 s
def test_a_killed_sweep_continues_where_it_stopped(synthetic, tmp_path):
    out = tmp_path / "killed"
    argv = _args(synthetic, out, "--parallel", "1", cardinalities=["1", "2"])
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "sweep.py"), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first = out / "R-26" / "seed_0" / "model_final.pth"
    try:
        deadline = time.monotonic() + 300
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.exists(), "the first cell never finished"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/seed_*/model_final.pth")}
    plan = _plan(synthetic, out, cardinalities=(1, 2))
    todo = [
        (v.name, k) for v, k in plan.cells() if plan.run_dir(v, k) / "model_final.pth" not in done
    ]
    assert todo, "the subprocess finished every cell before it was killed"
    result = run_sweep(plan, parallel=1, bootstrap=200, progress=False)
    assert result.trained == todo  # the rest, and only the rest
    assert {p: p.stat().st_mtime_ns for p in done} == done
    assert _report(out)["complete"]


@pytest.mark.slow  # two spawned workers: ~20 s of imports
def test_a_sweep_in_a_pool_evaluates_every_cell(synthetic, tmp_path):
    """Two runs at once in worker processes; this process evaluates the cells they finish."""
    plan = _plan(synthetic, tmp_path / "pool", cardinalities=(1, 2), runs=1)
    result = run_sweep(plan, parallel=2, bootstrap=200, progress=False)
    assert sorted(result.trained) == sorted(result.evaluated) == [("R-26", 0), ("X-26-2x2d", 0)]
    report = _report(tmp_path / "pool")
    assert report["complete"] and not report["run_to_run_measured"]


def test_bonferroni_confidence():
    assert bonferroni_confidence(0.95, 4) == pytest.approx(0.9875)
    assert bonferroni_confidence(0.95, 1) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="comparisons must be a positive integer"):
        bonferroni_confidence(0.95, 0)


def test_familywise_coverage_in_the_simulation():
    """Three detectors equal to the baseline, 3 runs each (the sweep's C's against C = 1): with
    each interval at 95%, all three hold 0 in fewer comparisons than with the Bonferroni level,
    which keeps the family near or above its nominal 95% (docs/statistics.md, 400 comparisons)."""
    small = Setting(num_images=40, num_categories=1, max_objects=6, run_sd=0.06, image_sd=0.15)
    r = simulate_family(small, 3, 60, seed=21)
    assert r["confidence"]["bonferroni"] == pytest.approx(1 - 0.05 / 3)
    assert r["family_coverage"]["bonferroni"] >= 0.9
    assert r["family_coverage"]["bonferroni"] > r["family_coverage"]["uncorrected"]
