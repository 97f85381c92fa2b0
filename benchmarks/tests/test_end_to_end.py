"""The end-to-end benchmark's parts (benchmarks/end_to_end.py) and the account's categories
(benchmarks/bf16_account.py): the stage split, the detection matching, the summary's ratios.
The whole run (child processes, 800-pixel photos) is the lead's quiet run; a tiny one:
``python tools/end_to_end_benchmark.py --models R-50 --num-images 2 --rounds 2 --threads 1
--short-side 160 --output /tmp/e2e``."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import tiny_cfg
from detectron2.layers import Conv2d
from detectron2.modeling import build_model

from benchmarks.bf16_account import conv_kind, op_category
from benchmarks.end_to_end import (
    BASELINE,
    STAGES,
    StageClock,
    _multiply_adds,
    _summary,
    end_to_end_markdown,
    match_fraction,
)
from resnext_det.winograd import winograd_convolutions


def test_stage_clock_attributes_each_stage_its_own_time():
    model = build_model(tiny_cfg()).eval()
    bottom_up = model.backbone.bottom_up
    forward = bottom_up.forward
    bottom_up.forward = lambda x: (time.sleep(0.05), forward(x))[1]  # a slow backbone
    clock = StageClock(model)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)

    def call(img):
        time.sleep(0.02)  # "preprocessing" before the model
        with torch.inference_mode():
            return model([{"image": img}])

    _, t = clock.call(call, image)
    assert set(t) == {*STAGES, "total"}
    assert all(t[k] >= 0 for k in STAGES)
    assert t["backbone"] >= 0.05 and t["fpn"] < 0.05
    assert t["preprocessing"] >= 0.02 and t["preprocessing"] < 0.05
    assert sum(t[k] for k in STAGES) <= t["total"] + 1e-9


def _dets(boxes, scores, classes):
    return {
        "boxes": np.array(boxes, dtype=np.float32),
        "scores": np.array(scores, dtype=np.float32),
        "classes": np.array(classes),
    }


def test_match_fraction_counts_each_detection_once_at_its_tolerance():
    ref = [_dets([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [1, 2, 3])]
    same = [_dets([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [1, 2, 3])]
    assert match_fraction(same, ref, box_atol=0.1, score_atol=1e-3) == 1.0
    # Moved by 1 px, another class for the third: two of three within IoU 0.5, none within 0.1 px.
    moved = [_dets([[1, 0, 11, 10], [21, 20, 41, 40], [1, 0, 11, 10]], [0.9, 0.8, 0.7], [1, 2, 0])]
    assert match_fraction(moved, ref, box_atol=0.1, score_atol=1e-3) == 0.0
    assert match_fraction(moved, ref, min_iou=0.5, score_atol=0.1) == pytest.approx(2 / 3)
    # A near candidate is not used up by a farther reference: the best overlap is taken.
    ref2 = [_dets([[0, 0, 10, 10], [2, 0, 12, 10]], [0.5, 0.5], [1, 1])]
    got2 = [_dets([[2, 0, 12, 10], [0, 0, 10, 10]], [0.5, 0.5], [1, 1])]
    assert match_fraction(got2, ref2, min_iou=0.5) == 1.0
    assert match_fraction([_dets(np.zeros((0, 4)), [], [])], ref) == 0.0


def test_summary_ratios_are_medians_of_per_round_ratios():
    def images(total, backbone):
        t = dict.fromkeys(STAGES, 0.0) | {"backbone": backbone, "total": total}
        return [t, t]

    rounds = [
        {BASELINE: images(2.0, 1.0), "project": images(1.0, 0.25)},
        {BASELINE: images(4.0, 2.0), "project": images(1.0, 0.5)},  # the machine got slower
        {BASELINE: images(2.0, 1.0), "project": images(1.2, 0.3)},
    ]
    s = _summary(rounds, [BASELINE, "project"])
    assert s[BASELINE]["ratio_to_detectron2"] == 1.0
    assert s["project"]["ratio_to_detectron2"] == pytest.approx(0.5)  # of 0.5, 0.25, 0.6
    assert s["project"]["seconds_per_image"] == 1.0
    assert s["project"]["stage_ratios_to_detectron2"]["backbone"] == pytest.approx(0.25)
    assert s["project"]["stages_ms_per_image"]["backbone"] == pytest.approx(300.0)


def test_markdown_says_whether_the_run_was_quiet():
    side = {"seconds_per_image": 1.0, "images_per_second": 1.0, "ratio_to_detectron2": 1.0,
            "stages_ms_per_image": dict.fromkeys(STAGES, 1.0),
            "stage_ratios_to_detectron2": dict.fromkeys(STAGES, 1.0)}  # fmt: skip
    report = {
        "machine": {"cpu": "CPU X"},
        "config": {"threads": 2, "image_files": ["a.jpg"], "images": "d", "rounds": 1,
                   "short_side": 800},  # fmt: skip
        "load_average_before": [0.1], "load_average_after": [0.1],
        "quiet": {"quiet": False, "max_load_1min": 5.0, "limit": 1.0, "own_threads": 2},
        "models": {"X-50-32x4d": {
            "sides": {BASELINE: side}, "agreement": {}, "detections_per_image": {},
            "processes": {},
        }},
    }  # fmt: skip
    text = end_to_end_markdown(report)
    assert "NOT quiet" in text and "CPU X" in text and "| detectron2 | 1.000 |" in text
    report["quiet"]["quiet"] = True
    assert "**quiet**" in end_to_end_markdown(report)


def test_account_categories():
    assert op_category("aten::mkldnn_convolution") == "convolution"
    assert op_category("aten::addmm") == "matrix product (fc)"
    assert op_category("aten::_to_copy") == "cast / layout conversion"
    assert op_category("torchvision::roi_align") == "roi_align"
    assert op_category("aten::_embedding_bag_forward_only") == "roi_align"
    assert op_category("torchvision::nms") == "nms"
    assert op_category("aten::clamp_min_") == "element-wise / memory-bound"  # ReLU
    assert op_category("aten::to") == "cast / layout conversion"
    assert op_category("aten::topk") == "element-wise / memory-bound"
    assert op_category("aten::nonzero") == "other"
    assert op_category("aten::add_") == "element-wise / memory-bound"
    assert conv_kind(torch.nn.Conv2d(8, 8, 3, groups=4)) == "grouped 3x3"
    assert conv_kind(torch.nn.Conv2d(8, 8, 1)) == "1x1"
    assert conv_kind(torch.nn.Conv2d(3, 8, 7)) == "dense 7x7"
    assert op_category("aten::bmm") == "convolution (Winograd products)"
    layer = Conv2d(128, 128, 3, padding=1)
    winograd_convolutions(layer)
    with torch.no_grad():
        assert conv_kind(layer, torch.zeros(1, 128, 48, 48)) == "dense 3x3 by Winograd"
        assert conv_kind(layer, torch.zeros(1, 128, 8, 8)) == "dense 3x3"  # too small


def test_floor_counts_every_convolution_and_fc_layer_of_a_call():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(800, 4)
    )
    images = [torch.zeros(1, 3, 10, 10), torch.zeros(2, 3, 10, 10)]
    # conv: 8x10x10 outputs of 3x3x3 multiply-adds; fc: 4 outputs of 800; per image, mean of 1 and 2
    per_image = 8 * 10 * 10 * 27 + 4 * 800
    assert _multiply_adds(model, model, images) == pytest.approx((1.5 * per_image,) * 2)
    assert not model[0]._forward_hooks  # the hooks are gone


def test_floor_counts_winograd_products_where_winograd_ran():
    conv = Conv2d(128, 128, 3, padding=1)
    winograd_convolutions(conv)
    big, small = torch.zeros(1, 128, 48, 48), torch.zeros(1, 128, 8, 8)  # 2304 px >= MIN_PIXELS
    with torch.no_grad():
        used, direct = _multiply_adds(conv, conv, [big])
        # 12x12 tiles of 4x4 outputs, 36 products per tile and channel pair
        assert used == 12 * 12 * 36 * 128 * 128
        assert direct == 48 * 48 * 128 * 128 * 9
        assert _multiply_adds(conv, conv, [small]) == (8 * 8 * 128 * 128 * 9,) * 2
    # with a gradient wanted, the direct convolution runs and is counted
    assert _multiply_adds(conv, conv, [big.requires_grad_()]) == (direct, direct)


def test_batch_benchmark_runs(tmp_path):
    """benchmarks/batch_bench.py end to end on two small photos (its own process: it sets its
    threads and allocator); the quiet 800-pixel run is in docs/benchmarks.md."""
    import subprocess
    import sys

    from conftest import REPO
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, size in enumerate(((160, 120), (150, 130))):  # two shapes: the folder's batch pads
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"photo{i}.jpg")
    args = ["--model", "R-50", "--images", str(tmp_path), "--num-images", "2", "--batch", "2"]
    args += ["--rounds", "1", "--threads", "1", "--short-side", "96"]
    table = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "batch_bench.py"), *args],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    for row in (
        "| one at a time | ",
        "| batches of 2, equal sizes | ",
        "| batches of 2, the folder |",
    ):
        assert row in table, table
    assert "1.00x" in table.split("| one at a time |")[1].splitlines()[0]


def test_a_missing_or_empty_image_folder_is_a_named_input_error(tmp_path):
    from benchmarks.end_to_end import _images
    from benchmarks.settings import BenchmarkInputError

    (tmp_path / "photo.jpg").write_bytes(b"")
    for folder, said in ((tmp_path / "missing", "not a folder"),
                         (tmp_path / "photo.jpg", "not a folder"),
                         (tmp_path / "empty", "no .jpg")):  # fmt: skip
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(BenchmarkInputError, match=said) as info:
            _images(folder, 2)
        assert info.value.field == "images" and str(folder) in str(info.value)
