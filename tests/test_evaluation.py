"""The COCO evaluator and the bootstrap against pycocotools' COCOeval (code nobody here wrote)."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from support.synthetic_results import synthetic_detections, synthetic_ground_truth

from resnext_det.evaluation import (
    ResultsFormatError,
    evaluate_results,
    load_ground_truth,
    load_results,
    match_detections,
    paired_bootstrap,
    resample_weights,
)
from resnext_det.evaluation.coco import METRIC_KEYS
from resnext_det.evaluation.metrics import summarize


def coco_eval(gt: dict, results: list) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def assert_stats_equal(ours: dict, e: COCOeval, tol: float = 1e-6) -> None:
    for i, key in enumerate(METRIC_KEYS):
        ref = e.stats[i]
        if ref < 0:  # COCOeval prints -1 where nothing is defined
            assert np.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(100 * ref, abs=tol), key


CASES = [
    # (gt kwargs, detection kwargs)
    ({}, {}),  # 12 categories with COCO-like gaps, crowd, ignore keys, empty images
    ({"num_categories": 3, "max_objects": 30}, {"random_per_image": 150, "score_decimals": 1}),
    ({"num_categories": 2}, {"score_decimals": 0, "random_per_image": 20}),  # all scores tie
    ({"num_categories": 30}, {"score_decimals": None, "quality": 0.95, "random_per_image": 0}),
]


@pytest.mark.parametrize("seed,case", list(enumerate(CASES)))
def test_equals_pycocotools(seed, case):
    gt = synthetic_ground_truth(50, seed=seed, **case[0])
    # The quirks must really be there for the test to mean something.
    anns = gt["annotations"]
    assert any(a["iscrowd"] for a in anns) and any("ignore" in a for a in anns)
    assert {a["image_id"] for a in anns} != {im["id"] for im in gt["images"]}  # empty images
    areas = np.array([a["area"] for a in anns])
    assert (areas < 32**2).any() and ((areas > 32**2) & (areas < 96**2)).any()
    assert (areas > 96**2).any()
    res = synthetic_detections(gt, seed=seed + 10, **case[1])
    e = coco_eval(gt, res)
    g = load_ground_truth(gt)
    precision, recall = match_detections(g, load_results(res, g)).accumulate()
    # The whole precision/recall arrays, not only their means, and to the bit.
    np.testing.assert_array_equal(precision[0], e.eval["precision"])
    np.testing.assert_array_equal(recall[0], e.eval["recall"])
    m = evaluate_results(gt, res)
    assert_stats_equal(m, e)
    # Per-category AP as detectron2's COCOEvaluator derives it from the same array.
    p = e.eval["precision"]
    for k, name in enumerate(g.category_names):
        pk = p[:, :, k, 0, -1]
        ref = 100 * pk[pk > -1].mean() if (pk > -1).any() else float("nan")
        assert m["per_category_AP"][name] == pytest.approx(ref, abs=1e-6, nan_ok=True)


def test_annotation_id_zero_and_all_crowd_like_pycocotools():
    gt = synthetic_ground_truth(30, seed=3, num_categories=2)
    gt["annotations"][3]["id"] = 0  # pycocotools reads a match to id 0 as "unmatched"
    for a in gt["annotations"][:25]:
        a["iscrowd"] = 1
    res = synthetic_detections(gt, seed=4)
    assert_stats_equal(evaluate_results(gt, res), coco_eval(gt, res))


def test_more_than_100_detections_per_image_and_category():
    gt = synthetic_ground_truth(6, seed=5, num_categories=1, max_objects=20)
    res = synthetic_detections(gt, seed=6, random_per_image=300, score_decimals=None)
    assert max(sum(r["image_id"] == i["id"] for r in res) for i in gt["images"]) > 100
    assert_stats_equal(evaluate_results(gt, res), coco_eval(gt, res))


def test_empty_results_score_zero():
    gt = synthetic_ground_truth(10, seed=0)
    m = evaluate_results(gt, [])
    assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["AR100"] == 0.0


def test_perfect_detections_score_100():
    gt = synthetic_ground_truth(20, seed=1)
    res = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    assert evaluate_results(gt, res)["AP"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models():
    gt = synthetic_ground_truth(60, seed=7)
    g = load_ground_truth(gt)
    weak = synthetic_detections(gt, seed=8, quality=0.3, random_per_image=8)
    strong = synthetic_detections(gt, seed=9, quality=0.9, random_per_image=2)
    return gt, g, {"weak": weak, "strong": strong}


def test_resample_at_full_set_equals_cocoeval(two_models):
    gt, g, res = two_models
    table = match_detections(g, load_results(res["weak"], g))
    ones = np.ones((1, g.num_images), dtype=np.int32)
    point = table.ap_from_weights(ones)
    e = coco_eval(gt, res["weak"])
    assert point["AP"][0] == pytest.approx(100 * e.stats[0], abs=1e-9)
    assert point["AP50"][0] == pytest.approx(100 * e.stats[1], abs=1e-9)
    assert point["AP75"][0] == pytest.approx(100 * e.stats[2], abs=1e-9)


def test_resample_equals_cocoeval_on_materialised_multiset(two_models):
    """A resample with repeated images equals COCOeval on a data set where each draw is a
    separate copy of the image (continuous scores, so no tie order is involved)."""
    gt, g, _ = two_models
    res = synthetic_detections(gt, seed=11, quality=0.6, score_decimals=None)
    W = resample_weights(g.num_images, 3, seed=5)
    table = match_detections(g, load_results(res, g))
    ours = table.ap_from_weights(W)
    precision, recall = table.accumulate(W)
    for b in range(len(W)):
        images, anns, dets = [], [], []
        by_image = {im["id"]: im for im in gt["images"]}
        for i, count in enumerate(W[b]):
            src = int(g.image_ids[i])
            for c in range(int(count)):
                new = src * 100 + c
                images.append({**by_image[src], "id": new})
                for a in gt["annotations"]:
                    if a["image_id"] == src:
                        anns.append({**a, "id": len(anns) + 1, "image_id": new})
                dets += [{**d, "image_id": new} for d in res if d["image_id"] == src]
        e = coco_eval({**gt, "images": images, "annotations": anns}, dets)
        assert ours["AP"][b] == pytest.approx(100 * e.stats[0], abs=1e-9)
        assert ours["AP50"][b] == pytest.approx(100 * e.stats[1], abs=1e-9)
        assert_stats_equal(summarize(precision[b], recall[b]), e)


def test_identical_results_give_zero_delta(two_models):
    _, g, res = two_models
    t = match_detections(g, load_results(res["weak"], g))
    t2 = match_detections(g, load_results(copy.deepcopy(res["weak"]), g))
    bs = paired_bootstrap({"a": t, "b": t2}, baseline="a", resamples=200, seed=0, progress=False)
    for key in ("AP", "AP50"):
        assert bs.delta_intervals["b"][key] == [0.0, 0.0]
        np.testing.assert_array_equal(bs.samples["b"][key], bs.samples["a"][key])
        assert bs.delta_p_values["b"][key] == 1.0
        lo, hi = bs.intervals["b"][key]
        assert lo < hi  # the models' own intervals are not degenerate
    assert not bs.significant("b")


def test_better_model_interval_excludes_zero_and_seed_reproduces(two_models):
    _, g, res = two_models
    tables = {n: match_detections(g, load_results(r, g)) for n, r in res.items()}
    bs = paired_bootstrap(tables, baseline="weak", resamples=300, seed=3, progress=False)
    for key in ("AP", "AP50"):
        lo, hi = bs.delta_intervals["strong"][key]
        assert lo > 0 and bs.significant("strong", key)
        assert bs.delta_p_values["strong"][key] < 0.01
    again = paired_bootstrap(tables, baseline="weak", resamples=300, seed=3, progress=False)
    other = paired_bootstrap(tables, baseline="weak", resamples=300, seed=4, progress=False)
    assert again.intervals == bs.intervals and again.delta_intervals == bs.delta_intervals
    assert other.intervals != bs.intervals
    # Chunking (a memory bound) must not change the draws.
    chunked = paired_bootstrap(
        tables, baseline="weak", resamples=300, seed=3, progress=False, max_chunk_elements=1000
    )
    assert chunked.delta_intervals == bs.delta_intervals


def test_interval_covers_point_estimate(two_models):
    gt, g, res = two_models
    table = match_detections(g, load_results(res["strong"], g))
    bs = paired_bootstrap({"s": table}, baseline="s", resamples=200, seed=0, progress=False)
    ap = 100 * coco_eval(gt, res["strong"]).stats[0]
    lo, hi = bs.intervals["s"]["AP"]
    assert lo < ap < hi


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gt():
    gt = synthetic_ground_truth(5, seed=0)
    return gt, load_ground_truth(gt)


def _det(gt, **kw):
    d = {
        "image_id": gt["images"][0]["id"],
        "category_id": gt["categories"][0]["id"],
        "bbox": [1.0, 2.0, 30.0, 40.0],
        "score": 0.5,
    }
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"image_id": 999999}, r"entry 1: 'image_id' 999999 is not an image of the ground truth"),
        ({"category_id": 4}, r"entry 1: 'category_id' 4 is not a category"),
        ({"bbox": [0, 0, -3, 5]}, r"entry 1: 'bbox' .* negative width or height"),
        ({"bbox": [0, 0, 5]}, r"entry 1: 'bbox' must be 4 finite numbers"),
        ({"score": float("nan")}, r"entry 1: 'score' must be a finite number"),
        ({"score": "high"}, r"entry 1: 'score' must be a finite number"),
        ({"image_id": 1.5}, r"entry 1: 'image_id' must be an integer"),
    ],
)
def test_bad_entry_names_file_entry_and_field(small_gt, tmp_path, bad, match):
    gt, g = small_gt
    path = tmp_path / "res.json"
    path.write_text(json.dumps([_det(gt), _det(gt, **bad)]))
    with pytest.raises(ResultsFormatError, match=rf"res\.json: {match}"):
        load_results(path, g)


def test_missing_key_and_not_a_list(small_gt, tmp_path):
    gt, g = small_gt
    d = _det(gt)
    del d["score"]
    with pytest.raises(ResultsFormatError, match=r"mine: entry 0 has no 'score'"):
        load_results([d], g, name="mine")
    path = tmp_path / "dict.json"
    path.write_text('{"annotations": []}')
    with pytest.raises(ResultsFormatError, match=r"dict\.json: COCO results must be a JSON list"):
        load_results(path, g)
    path.write_text("[{")
    with pytest.raises(ResultsFormatError, match=r"dict\.json: not valid json"):
        load_results(path, g)
    with pytest.raises(FileNotFoundError, match=r"results file .*nope\.json' does not exist"):
        load_results(tmp_path / "nope.json", g)


def test_bad_ground_truth():
    with pytest.raises(ResultsFormatError, match=r"needs a list under 'annotations'"):
        load_ground_truth({"images": [], "categories": []})
    gt = synthetic_ground_truth(3, seed=0)
    del gt["annotations"][1]["area"]
    with pytest.raises(ResultsFormatError, match=r"annotations\[1\]: 'area' must be a number"):
        load_ground_truth(gt)


@pytest.mark.parametrize("seed,case", list(enumerate(CASES[:2])))
def test_equals_faster_coco_eval(seed, case):
    """A second implementation nobody here wrote (faster-coco-eval's C++ evaluator, a dev
    dependency): the 12 numbers agree with it as with pycocotools."""
    fce = pytest.importorskip("faster_coco_eval")
    gt = synthetic_ground_truth(50, seed=seed, **case[0])
    res = synthetic_detections(gt, seed=seed + 10, **case[1])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = fce.COCO(copy.deepcopy(gt))
        e = fce.COCOeval_faster(coco, coco.loadRes(copy.deepcopy(res)), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert_stats_equal(evaluate_results(gt, res), e, tol=1e-6)


def test_unknown_image_names_the_real_id_range(small_gt, tmp_path):
    """Issue 15 item 13: the message said "ids 0..N" for ids that start elsewhere."""
    gt, g = small_gt
    path = tmp_path / "r.json"
    path.write_text(json.dumps([_det(gt, image_id=5)]))
    lo, hi = int(g.image_ids.min()), int(g.image_ids.max())
    assert lo > 0
    with pytest.raises(
        ResultsFormatError, match=rf"5 images, ids {lo}\.\.{hi}\)\. Results of another"
    ):
        load_results(path, g)


def test_results_errors_share_the_bad_file_base(tmp_path):
    """Tools catch one base for every bad file the user gave (issue 13)."""
    from resnext_det.errors import BadFileError

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BadFileError, match=r"bad\.json: not valid json"):
        load_results(bad, load_ground_truth(synthetic_ground_truth(3, seed=0)))
