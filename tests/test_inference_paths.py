"""Every detector call of the project gives detectron2's ``DefaultPredictor``'s detections.

The paths: ``Predictor`` (Python), the ``predict`` command, ``--eval-only`` for yacs
(:func:`resnext_det.training.evaluate`) and LazyConfig (:func:`resnext_det.lazy.
evaluate_lazy_weights`) configs, and the comparison's models mode
(:func:`resnext_det.evaluation.compare_models`). Each runs the tiny ResNeXt-FPN Faster R-CNN with
the same weights (BatchNorm statistics made non-trivial, so that folding is really exercised) on
the same images as ``DefaultPredictor`` (detectron2's reader, resize and un-optimised model), with
score threshold 0 so that every image has detections. Each path's results are matched to the
reference's, detection by detection.

Tolerances. fp32 (BatchNorm folded, channels_last: the same arithmetic in another order): every
detection matched, same class, box corners within 0.02 px (images 64-96 px; the predict command
writes boxes rounded to 0.01 px), scores within 1e-3 (COCO files round them to 1e-5).
bf16 (8-bit mantissa): of the reference's detections scoring at least 0.2, at least 75% matched
with the same class, IoU >= 0.5 and score within 0.1 (measured: 83%). Random weights make a
network whose logits saturate, far more sensitive to rounding than a trained one: this test says
that bf16 runs the same detector; the accuracy claim (AP within 0.5 of fp32) is measured on a
trained model by ``benchmarks/bf16_accuracy.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, randomize_norm_stats
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from resnext_det.config import load_config
from resnext_det.speed import InferenceSettings, native_bf16

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
TINY_LAZY = REPO / "configs" / "lazy" / "tests" / "faster_rcnn_tiny.py"

FP32_BOX_ATOL = 0.02
FP32_SCORE_ATOL = 1e-3
BF16_MIN_SCORE, BF16_MIN_IOU, BF16_SCORE_ATOL, BF16_MATCHED = 0.2, 0.5, 0.1, 0.75


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=2, num_val=4, image_size=80, seed=0
    )


@pytest.fixture
def registered(synthetic):
    synthetic.register("synthetic")
    return synthetic


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = randomize_norm_stats(build_model(load_config(TINY)), seed=1)
    path = tmp_path_factory.mktemp("weights") / "whole.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def config(weights: Path, out: Path | None = None):
    cfg = load_config(
        TINY, ["MODEL.WEIGHTS", str(weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    )
    if out is not None:
        cfg.OUTPUT_DIR = str(out)
    return cfg


def images(ds) -> dict[str, np.ndarray]:
    """file name -> BGR image, as detectron2's loaders read them."""
    return {p.name: read_image(str(p), format="BGR") for p in sorted(ds.val_image_root.iterdir())}


def as_coco(instances, image_id: int) -> list[dict]:
    """Detections as a COCO results list (xywh boxes; category ids: contiguous + 1, the
    synthetic set's mapping)."""
    boxes = instances.pred_boxes.tensor.double().tolist()
    return [
        {"image_id": image_id, "category_id": int(c) + 1, "score": float(s),
         "bbox": [x0, y0, x1 - x0, y1 - y0]}
        for (x0, y0, x1, y1), s, c in zip(
            boxes, instances.scores.tolist(), instances.pred_classes.tolist()
        )
    ]  # fmt: skip


def default_predictor_results(ds, cfg) -> dict[str, list[dict]]:
    """detectron2's DefaultPredictor, un-optimised fp32: file name -> COCO detections."""
    from detectron2.engine import DefaultPredictor

    predictor = DefaultPredictor(cfg)
    out = {}
    for name, bgr in images(ds).items():
        out[name] = as_coco(predictor(bgr)["instances"].to("cpu"), 0)
    assert all(len(d) >= 20 for d in out.values()), "the test needs detections on every image"
    return out


@pytest.fixture(scope="module")
def reference(synthetic, weights) -> dict[str, list[dict]]:
    return default_predictor_results(synthetic, config(weights))


def by_file(results: list[dict], coco_json: Path) -> dict[str, list[dict]]:
    names = {
        im["id"]: Path(im["file_name"]).name for im in json.loads(coco_json.read_text())["images"]
    }
    out: dict[str, list[dict]] = {n: [] for n in names.values()}
    for r in results:
        out[names[r["image_id"]]].append(r)
    return out


def _corners(d: dict) -> np.ndarray:
    x, y, w, h = d["bbox"]
    return np.array([x, y, x + w, y + h])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union) if union > 0 else 0.0


def assert_equal_detections(got: dict[str, list[dict]], expected: dict[str, list[dict]]) -> None:
    """Every detection of ``expected`` has one of its own in ``got`` (same class, box within
    FP32_BOX_ATOL, score within FP32_SCORE_ATOL), and there are no others."""
    assert set(got) == set(expected)
    for name, ref in expected.items():
        dets = list(got[name])
        assert len(dets) == len(ref), f"{name}: {len(dets)} detections, expected {len(ref)}"
        for r in ref:
            hits = [
                i for i, d in enumerate(dets)
                if d["category_id"] == r["category_id"]
                and abs(d["score"] - r["score"]) <= FP32_SCORE_ATOL
                and np.abs(_corners(d) - _corners(r)).max() <= FP32_BOX_ATOL
            ]  # fmt: skip
            assert hits, f"{name}: no detection matches {r}"
            dets.pop(hits[0])


def matched_fraction(got: dict[str, list[dict]], expected: dict[str, list[dict]]) -> float:
    """The fraction of ``expected``'s detections scoring >= BF16_MIN_SCORE that ``got`` has
    (same class, IoU >= BF16_MIN_IOU, score within BF16_SCORE_ATOL; each used once)."""
    total = matched = 0
    for name, ref in expected.items():
        dets = list(got[name])
        for r in (r for r in ref if r["score"] >= BF16_MIN_SCORE):
            total += 1
            hit = next(
                (i for i, d in enumerate(dets)
                 if d["category_id"] == r["category_id"]
                 and abs(d["score"] - r["score"]) <= BF16_SCORE_ATOL
                 and _iou(_corners(d), _corners(r)) >= BF16_MIN_IOU),
                None,
            )  # fmt: skip
            if hit is not None:
                matched += 1
                dets.pop(hit)
    assert total >= 10, "too few confident reference detections for the bf16 test to mean much"
    return matched / total


@pytest.fixture
def folded(monkeypatch) -> list[str]:
    """The class names of the models :func:`resnext_det.speed.fold_batchnorm` is called on (every
    path reaches it through ``prepare_for_inference`` -> ``optimize_for_inference``)."""
    import resnext_det.speed as speed

    calls: list[str] = []
    fold = speed.fold_batchnorm

    def spy(module):
        calls.append(type(module).__name__)
        return fold(module)

    monkeypatch.setattr(speed, "fold_batchnorm", spy)
    return calls


def predictor_results(synthetic, predictor) -> dict[str, list[dict]]:
    return {name: as_coco(predictor(bgr), 0) for name, bgr in images(synthetic).items()}


def test_reference_differs_from_a_model_with_other_weights(synthetic, weights, reference, tmp_path):
    """The matching is strict enough to tell two models apart (the other tests mean something)."""
    from resnext_det.predict import Predictor

    state = torch.load(weights, weights_only=True)["model"]
    key = "roi_heads.box_predictor.bbox_pred.bias"
    state[key] = state[key] + 0.05
    other = tmp_path / "other.pth"
    torch.save({"model": state}, other)
    got = predictor_results(synthetic, Predictor(config(other)))
    with pytest.raises(AssertionError):
        assert_equal_detections(got, reference)


def test_python_predictor_fp32_equals_default_predictor(synthetic, weights, reference):
    from resnext_det.predict import Predictor

    predictor = Predictor(config(weights))
    assert predictor.inference == InferenceSettings()  # optimised (folded, channels_last)
    assert all(getattr(m, "norm", None) is None for m in predictor.model.modules()), "not folded"
    assert_equal_detections(predictor_results(synthetic, predictor), reference)
    # The one-thread set-up of the commands (oneDNN 1x1 convolutions) too.
    predictor = Predictor(config(weights), inference=InferenceSettings(onednn_1x1=True))
    assert_equal_detections(predictor_results(synthetic, predictor), reference)


@pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated (slow) on this CPU")
def test_python_predictor_bf16_within_tolerance(synthetic, weights, reference):
    from resnext_det.predict import Predictor

    predictor = Predictor(config(weights), inference=InferenceSettings(amp_dtype="bfloat16"))
    got = predictor_results(synthetic, predictor)
    instances = predictor(next(iter(images(synthetic).values())))
    assert instances.scores.dtype == instances.pred_boxes.tensor.dtype == torch.float32
    with pytest.raises(AssertionError):  # bf16 really ran: not bit-for-bit the fp32 detections
        assert_equal_detections(got, reference)
    assert matched_fraction(got, reference) >= BF16_MATCHED


def test_predict_command_equals_default_predictor(synthetic, weights, reference, tmp_path, folded):
    from resnext_det.commands.predict import main

    out = tmp_path / "out"
    code = main([
        "--no-progress", "--config-file", str(TINY), "--input", str(synthetic.val_image_root),
        "--output", str(out), "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS",
        str(weights),
    ])  # fmt: skip
    assert code == 0
    assert folded == ["GeneralizedRCNN"]
    results = json.loads((out / "coco_instances_results.json").read_text())
    assert_equal_detections(by_file(results, out / "images.json"), reference)


def _by_dataset_file(results: list[dict], ds) -> dict[str, list[dict]]:
    return by_file(results, Path(ds.val_json))


def test_yacs_eval_only_equals_default_predictor(registered, weights, reference, tmp_path, folded):
    from resnext_det.training import evaluate

    evaluate(config(weights, tmp_path))
    assert folded == ["GeneralizedRCNN"]
    results = tmp_path / "inference" / "synthetic_val" / "coco_instances_results.json"
    assert_equal_detections(
        _by_dataset_file(json.loads(results.read_text()), registered), reference
    )


def test_lazy_eval_only_equals_default_predictor(registered, weights, tmp_path, folded):
    from resnext_det.lazy import evaluate_lazy_weights, load_lazy_config

    cfg = load_lazy_config(
        TINY_LAZY,
        [
            f"train.output_dir={tmp_path}",
            f"train.init_checkpoint={weights}",
            "model.roi_heads.box_predictor.test_score_thresh=0.0",
            f"+dataloader.evaluator.output_dir={tmp_path / 'inference'}",
        ],
    )
    evaluate_lazy_weights(cfg)
    assert folded == ["GeneralizedRCNN"]
    results = tmp_path / "inference" / "coco_instances_results.json"
    # The LazyConfig model has torchvision's conventions (RGB, its mean and std, the stride in
    # the 3x3): DefaultPredictor on the yacs twin told the same.
    twin = config(weights)
    twin.MODEL.RESNETS.STRIDE_IN_1X1 = cfg.model.backbone.bottom_up.spec.stride_in_1x1
    twin.INPUT.FORMAT = cfg.model.input_format
    twin.MODEL.PIXEL_MEAN, twin.MODEL.PIXEL_STD = (
        list(cfg.model.pixel_mean),
        list(cfg.model.pixel_std),
    )
    assert_equal_detections(
        _by_dataset_file(json.loads(results.read_text()), registered),
        default_predictor_results(registered, twin),
    )


def test_comparison_models_mode_equals_default_predictor(
    registered, weights, reference, tmp_path, folded
):
    from resnext_det.evaluation import compare_models

    compare_models(
        {"tiny": (config(weights), str(weights))},
        "synthetic_val",
        tmp_path,
        progress=False,
        bootstrap=0,
    )
    assert folded == ["GeneralizedRCNN"]
    results = json.loads((tmp_path / "results_tiny.json").read_text())
    assert_equal_detections(_by_dataset_file(results, registered), reference)


@pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated (slow) on this CPU")
def test_yacs_eval_only_bf16_within_tolerance(registered, weights, reference, tmp_path):
    from resnext_det.training import evaluate

    cfg = config(weights, tmp_path)
    cfg.MODEL.RESNEXT.INFERENCE_AMP_DTYPE = "bfloat16"
    evaluate(cfg)
    results = tmp_path / "inference" / "synthetic_val" / "coco_instances_results.json"
    got = _by_dataset_file(json.loads(results.read_text()), registered)
    with pytest.raises(AssertionError):  # bf16 really ran
        assert_equal_detections(got, reference)
    assert matched_fraction(got, reference) >= BF16_MATCHED


@pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated (slow) on this CPU")
def test_bf16_weights_stored_in_bf16_give_autocasts_detections_exactly(synthetic, weights):
    """prepare_for_inference stores conv and linear weights in bf16 (autocast_weights): the same
    bits as autocast casting fp32 weights at every call (the prediction layers, fp32 in both)."""
    from resnext_det.mixed_precision import FP32Conv2d, FP32Linear, fp32_prediction_layers
    from resnext_det.predict import Predictor

    bf16 = Predictor(config(weights), inference=InferenceSettings(amp_dtype="bfloat16"))
    convs = [
        m
        for m in bf16.model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
        and not isinstance(m, (FP32Conv2d, FP32Linear))
    ]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in convs
        if m.weight.dim() == 4
    )
    fp32 = Predictor(config(weights))  # fp32 weights, run under autocast by hand
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())
    assert fp32_prediction_layers(fp32.model) == 4
    for bgr in images(synthetic).values():
        got = bf16(bgr)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            expected = fp32._predictor(bgr)["instances"].to("cpu")
        assert len(got) == len(expected) > 0
        for field in ("scores", "pred_classes"):
            assert torch.equal(got.get(field), expected.get(field))
        assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)


def test_autocast_weights_leaves_layers_that_compute_otherwise_alone():
    from detectron2.layers import Conv2d

    from resnext_det.deform import DeformConv2d
    from resnext_det.speed import autocast_weights

    net = torch.nn.Sequential(
        Conv2d(4, 8, 3, norm=torch.nn.GroupNorm(2, 8)),  # GroupNorm: not folded, stays fp32
        DeformConv2d(8, 8, 3, padding=1),  # runs torchvision's kernel in its weights' dtype
        torch.nn.Linear(8, 2),
    )
    assert autocast_weights(net, "bfloat16") == 2
    assert net[0].weight.dtype == net[0].bias.dtype == net[2].weight.dtype == torch.bfloat16
    assert net[0].norm.weight.dtype == torch.float32
    assert net[1].weight.dtype == torch.float32
    assert autocast_weights(net, "bfloat16") == 0  # idempotent


# ------------------------------------------------------------------------------------------
# Each model runs as its own config says, whichever path runs it


def config_file(tmp_path: Path, amp_dtype: str = "") -> Path:
    """The tiny config as a user's yaml: every detection kept (score threshold 0, as
    ``config``), ``INFERENCE_AMP_DTYPE`` ``amp_dtype``."""
    path = tmp_path / f"tiny_{amp_dtype or 'fp32'}.yaml"
    path.write_text(
        f'_BASE_: "{TINY}"\nMODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 0.0\n'
        f'  RESNEXT:\n    INFERENCE_AMP_DTYPE: "{amp_dtype}"\n'
    )
    return path


def other_weights(weights: Path, tmp_path: Path) -> Path:
    """The same detector in a file of other content (a comparison refuses one run twice)."""
    state = torch.load(weights, weights_only=True)
    state["iteration"] = 1
    path = tmp_path / "copy.pth"
    torch.save(state, path)
    return path


def assert_bf16_run(got: dict[str, list[dict]], reference: dict[str, list[dict]]) -> None:
    with pytest.raises(AssertionError):  # bf16 really ran: not bit-for-bit the fp32 detections
        assert_equal_detections(got, reference)
    assert matched_fraction(got, reference) >= BF16_MATCHED


@pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated (slow) on this CPU")
def test_comparison_runs_each_model_as_its_config_says(registered, weights, reference, tmp_path):
    from resnext_det.commands.compare import main

    out = tmp_path / "cmp"
    code = main([
        "--model", f"fp32={config_file(tmp_path)}:{weights}",
        "--model", f"bf16={config_file(tmp_path, 'bfloat16')}:{other_weights(weights, tmp_path)}",
        "--dataset", "synthetic_val", "--out", str(out), "--bootstrap", "0", "--gallery", "0",
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["models"]["fp32"]["inference"] == "fp32, optimised"
    assert report["models"]["bf16"]["inference"] == "bfloat16 autocast, optimised"
    assert "bf16 bfloat16 autocast, optimised" in (out / "comparison.md").read_text()
    for name, check in (("fp32", assert_equal_detections), ("bf16", assert_bf16_run)):
        results = json.loads((out / f"results_{name}.json").read_text())
        check(_by_dataset_file(results, registered), reference)


@pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated (slow) on this CPU")
def test_predict_compare_runs_each_model_as_its_config_says(
    synthetic, weights, reference, tmp_path
):
    """``predict --compare``: the second model's config asks for bf16, the first's does not."""
    from resnext_det.commands.predict import main

    out = tmp_path / "out"
    code = main([
        "--no-progress", "--input", str(synthetic.val_image_root), "--output", str(out),
        "--confidence-threshold", "0.0", "--compare", f"fp32={config_file(tmp_path)}:{weights}",
        f"bf16={config_file(tmp_path, 'bfloat16')}:{weights}",
    ])  # fmt: skip
    assert code == 0
    for name, check in (("fp32", assert_equal_detections), ("bf16", assert_bf16_run)):
        results = json.loads((out / name / "coco_instances_results.json").read_text())
        check(by_file(results, out / "images.json"), reference)


@pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated (slow) on this CPU")
def test_lazy_eval_only_takes_its_inference_keys(registered, weights, tmp_path):
    """A LazyConfig says how it runs at inference with ``train.inference.KEY``, as a yacs config
    with ``MODEL.RESNEXT.KEY``; the command passes them through."""
    from resnext_det.commands.lazy_train import main
    from resnext_det.errors import ConfigError
    from resnext_det.lazy import lazy_training_view, load_lazy_config

    def overrides(out: Path, *extra: str) -> list[str]:
        return [
            f"train.output_dir={out}", f"train.init_checkpoint={weights}", "train.device=cpu",
            "model.roi_heads.box_predictor.test_score_thresh=0.0",
            f"+dataloader.evaluator.output_dir={out / 'inference'}", *extra,
        ]  # fmt: skip

    def run(out: Path, *extra: str) -> dict[str, list[dict]]:
        args = ["--config-file", str(TINY_LAZY), "--eval-only", *overrides(out, *extra)]
        assert main(args) == 0
        results = out / "inference" / "coco_instances_results.json"
        return _by_dataset_file(json.loads(results.read_text()), registered)

    fp32 = run(tmp_path / "fp32")
    bf16 = run(tmp_path / "bf16", "+train.inference.INFERENCE_AMP_DTYPE=bfloat16")
    assert_bf16_run(bf16, fp32)
    view = lazy_training_view(
        load_lazy_config(TINY_LAZY, overrides(tmp_path, "+train.inference.COMPILE=True"))
    )
    assert view.MODEL.RESNEXT.COMPILE is True
    with pytest.raises(ConfigError, match=r"train.inference.AMP: no such key; allowed: \["):
        lazy_training_view(
            load_lazy_config(TINY_LAZY, overrides(tmp_path, "+train.inference.AMP=1"))
        )
    bad = overrides(tmp_path, "+train.inference.INFERENCE_AMP_DTYPE=bf16")
    with pytest.raises(ConfigError, match=r"^train.inference.INFERENCE_AMP_DTYPE must be one of"):
        lazy_training_view(load_lazy_config(TINY_LAZY, bad))
    # the command refuses it before it writes anything in the output folder
    out = tmp_path / "refused"
    args = ["--config-file", str(TINY_LAZY), "--eval-only"]
    assert main([*args, *overrides(out, "+train.inference.INFERENCE_AMP_DTYPE=bf16")]) == 2
    assert not out.exists()


def test_bf16_keeps_the_prediction_layers_in_fp32(weights):
    """Under bf16 the heads' outputs (RPN objectness and deltas, class scores, box deltas) come
    from fp32 layers whose weights stay fp32; every other conv and linear layer is bf16."""
    from resnext_det.mixed_precision import FP32Conv2d, FP32Linear
    from resnext_det.predict import Predictor
    from resnext_det.speed import autocast

    model = Predictor(config(weights), inference=InferenceSettings(amp_dtype="bfloat16")).model
    rpn, box = model.proposal_generator.rpn_head, model.roi_heads.box_predictor
    fp32 = [rpn.objectness_logits, rpn.anchor_deltas, box.cls_score, box.bbox_pred]
    assert [type(m) for m in fp32] == [FP32Conv2d, FP32Conv2d, FP32Linear, FP32Linear]
    assert all(m.weight.dtype == torch.float32 for m in fp32)
    others = [m for m in model.modules() if type(m) in (torch.nn.Linear,) or m is rpn.conv]
    assert others and all(m.weight.dtype == torch.bfloat16 for m in others)
    with autocast("cpu", "bfloat16"):
        x = torch.randn(1, 16, 8, 8, dtype=torch.bfloat16)
        assert rpn.objectness_logits(x).dtype == torch.float32
        assert box.cls_score(torch.randn(2, box.cls_score.in_features)).dtype == torch.float32
    # The layers keep their parameters' names (checkpoints load as before).
    keys = set(model.state_dict())
    assert {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.bias",
            "proposal_generator.rpn_head.objectness_logits.weight"} <= keys  # fmt: skip
