"""The embedded default runs end to end: every step (the smoke schedule), and every run learns
(the short schedule)."""

from __future__ import annotations

import json

import onnx
import pytest
from PIL import Image

from resnext_det import ResNeXtSpec
from resnext_det.complexity import backbone_complexity
from resnext_det.demo import DEMO_MODELS, demo_config, run_demo

# AP@0.5 (percent) every run of the short schedule must reach on its val split. Chance is about 0
# (boxes at random: no overlap of 0.5 with the shapes); measured 54.0-59.2 for 2 runs of each
# model on AMD EPYC (2026-12-04), so a run that did not learn, or diverged, falls far below.
LEARNED_AP50 = 25.0


def test_demo_models_are_of_equal_complexity(tmp_path):
    specs = [ResNeXtSpec.from_config(demo_config(path, tmp_path)) for path in DEMO_MODELS.values()]
    assert [s.cardinality for s in specs] == [1, 4]
    assert specs[1].width_per_group == 6  # the template's width for C = 4 at d0 = 16
    params = [backbone_complexity(s, classifier=False).params for s in specs]
    # within 2.5%, as the paper's pair (X-50-32x4d 25.0M vs R-50 25.5M, 2%)
    assert abs(params[1] - params[0]) / params[0] < 0.025


def test_demo_smoke(tmp_path):
    """The whole multi-run path: 3 runs of each model, two at a time in worker processes, the
    seed-aware comparison, the export."""
    result = run_demo(tmp_path / "demo", schedule="smoke", runs=3, parallel=2)
    report = json.loads((tmp_path / "demo" / "comparison" / "comparison.json").read_text())
    assert list(report["models"]) == list(DEMO_MODELS)
    for i, (name, metrics) in enumerate(report["models"].items(), 1):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "backbone_gflops"} <= set(metrics)
        assert metrics["runs"] == 3 and len(metrics["per_run"]) == 3
        assert result.runs[name] == [
            tmp_path / "demo" / f"model_{i}" / f"seed_{k}" / "model_final.pth" for k in range(3)
        ]
    # the runs differ only in SEED, and did differ
    finals = result.runs[list(DEMO_MODELS)[0]]
    assert finals[0].read_bytes() != finals[1].read_bytes()
    text = (tmp_path / "demo" / "comparison" / "comparison.md").read_text()
    assert "3 vs 3 training runs" in text
    for suffix in ("md", "csv"):
        assert (tmp_path / "demo" / "comparison" / f"comparison.{suffix}").stat().st_size > 0
    with Image.open(tmp_path / "demo" / "comparison" / "comparison.png") as image:
        assert image.size[0] > 300
    safetensors_path, onnx_path = result.exports
    assert (
        safetensors_path.exists()
        and (safetensors_path.parent / f"{safetensors_path.name}.json").exists()
    )
    onnx.checker.check_model(str(onnx_path))


@pytest.mark.slow
def test_every_demo_run_learns(tmp_path):
    """The short schedule (128 images, 250 iterations): 2 runs of each model, two at a time;
    each run's AP@0.5 on the val split is far above chance, and the comparison reports them."""
    run_demo(tmp_path / "demo", schedule="short", runs=2, parallel=2)
    report = json.loads((tmp_path / "demo" / "comparison" / "comparison.json").read_text())
    for name, metrics in report["models"].items():
        per_run = [r["AP50"] for r in metrics["per_run"]]
        assert len(per_run) == 2 and min(per_run) > LEARNED_AP50, (name, per_run)
