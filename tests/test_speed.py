"""resnext_det.speed: every optimisation keeps outputs equal (or within a stated tolerance).

No timing here: timed claims live in tools/benchmark.py and docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import REPO, randomize_norm_stats, tiny_cfg
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

import resnext_det
from resnext_det import ResNeXtSpec, make_resnext
from resnext_det.speed import (
    apply_inference_config,
    autocast,
    fold_batchnorm,
    max_relative_error,
    onednn_1x1_convolutions,
    optimize_for_inference,
    to_channels_last,
)

# fp32 outputs of an optimised model stay within this of the original (max |diff| / max |ref|).
FP32_TOL = 1e-4
# bf16 autocast on CPU, X-50-32x4d at real width, random weights and norm statistics: measured
# 0.8-1.1e-2 (fp16: 1.3e-3); bf16 keeps 8 bits of mantissa and the error adds up over 50 layers.
BF16_TOL = 5e-2

SMALL = dict(depth=26, cardinality=4, width_per_group=4, stem_out_channels=16, res2_out_channels=32)


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]


def _backbone(form: str, norm: str, **kw) -> nn.Module:
    net = make_resnext(ResNeXtSpec(**{**SMALL, **kw}, block_form=form, norm=norm))
    return randomize_norm_stats(net.eval(), seed=1)


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
@pytest.mark.parametrize("form", ["grouped", "aggregated", "concat"])
def test_fold_batchnorm_keeps_outputs(form, norm):
    net = _backbone(form, norm)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        assert _norms(net), "the test needs norms to fold"
        fold_batchnorm(net)
        assert _norms(net) == [], "every BatchNorm should have been folded"
        actual = net(x)
    assert max_relative_error(actual, expected) < FP32_TOL
    if form == "aggregated":
        block = net.res2[0]
        assert isinstance(block.norm3, nn.Identity)
        # The shift goes to one path only; the others must stay bias-free or it would count C times.
        assert block.paths[0].conv3.bias is not None and block.paths[1].conv3.bias is None


def test_fold_is_exact_for_one_conv():
    """One conv + FrozenBN, with detectron2's eps, against the formula written out by hand."""
    from detectron2.layers import Conv2d

    conv = Conv2d(4, 6, 3, padding=1, bias=False, norm=FrozenBatchNorm2d(6))
    randomize_norm_stats(conv, seed=3)
    x = torch.randn(1, 4, 8, 8)
    bn = conv.norm
    ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(), padding=1)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + 1e-5)
    ref = (ref - bn.running_mean.double()[:, None, None]) * scale[:, None, None] + bn.bias.double()[
        :, None, None
    ]
    fold_batchnorm(conv)
    assert conv.norm is None and conv.bias is not None
    torch.testing.assert_close(conv(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_fold_leaves_groupnorm_and_refuses_training_bn():
    net = _backbone("grouped", "GN", cardinality=32, width_per_group=1, stem_out_channels=32)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        fold_batchnorm(net)
        assert max_relative_error(net(x), expected) == 0.0
    training = make_resnext(ResNeXtSpec(**SMALL, norm="BN")).train()
    with pytest.raises(ValueError, match=r"stem\.conv1\.norm.*training mode.*eval"):
        fold_batchnorm(training)


def test_fold_fpn_backbone():
    cfg = tiny_cfg()
    cfg.MODEL.FPN.NORM = "BN"  # FPN convs with norms, so that they are folded too
    fpn = randomize_norm_stats(build_backbone(cfg).eval(), seed=2)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = fpn(x)
        fold_batchnorm(fpn)
        assert _norms(fpn) == []
        assert max_relative_error(fpn(x), expected) < FP32_TOL


def _calibrated_detector(form: str) -> nn.Module:
    """A tiny Faster R-CNN whose norm statistics match its activations (as after training), with
    FrozenBN. Random statistics would blow activations up until the heads saturate, and then
    rounding-level differences move boxes by more than any tolerance says anything about."""
    cfg = tiny_cfg(NORM="BN")
    cfg.MODEL.RESNEXT.BLOCK_FORM = form
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # keep many detections to compare
    model = randomize_norm_stats(build_model(cfg), seed=4)  # random affine terms
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.backbone.train()
    with torch.no_grad():
        for _ in range(3):
            model.backbone(torch.randn(4, 3, 64, 96))
    return FrozenBatchNorm2d.convert_frozen_batchnorm(model.eval())


@pytest.mark.parametrize("form", ["grouped", "aggregated", "concat"])
def test_optimize_tiny_detector_detections(form):
    """Whole Faster R-CNN: the same detections (boxes, scores, classes) before and after."""
    model = _calibrated_detector(form)
    inputs = [{"image": torch.rand(3, 64, 96) * 255}]
    with torch.no_grad():
        expected = model(inputs)[0]["instances"]
        optimize_for_inference(model)
        assert _norms(model) == []
        actual = model(inputs)[0]["instances"]
    assert len(actual) == len(expected) > 10
    # Match each detection to its nearest of the same class: many scores tie at this scale, and
    # NMS/top-k may order tied detections differently after a rounding-level change.
    boxes_e, boxes_a = expected.pred_boxes.tensor, actual.pred_boxes.tensor
    same_class = expected.pred_classes[:, None] == actual.pred_classes[None, :]
    dist = (boxes_e[:, None] - boxes_a[None]).abs().amax(-1).masked_fill(~same_class, float("inf"))
    nearest = dist.argmin(1)
    assert dist.min(1).values.max() < FP32_TOL * 96  # image width: 1e-4 of the image
    assert (actual.scores[nearest] - expected.scores).abs().max() < FP32_TOL


def test_channels_last_keeps_outputs():
    net = _backbone("grouped", "FrozenBN")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = net(x)
        to_channels_last(net)
        actual = net(x)
    assert net.channels_last
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in actual.values())
    assert max_relative_error(actual, expected) < FP32_TOL


def _detectron2_x50() -> nn.Module:
    """detectron2's own build_resnet_backbone, X-50-32x4d, with non-trivial norm statistics."""
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.NUM_GROUPS, r.WIDTH_PER_GROUP, r.STRIDE_IN_1X1 = 32, 4, False
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return randomize_norm_stats(build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval(), seed=5)


@pytest.fixture(scope="module")
def x50_pair():
    ref = _detectron2_x50()
    ours = make_resnext(ResNeXtSpec(depth=50, cardinality=32, width_per_group=4)).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
    return ref, ours, x, expected


def test_optimize_for_inference_matches_detectron2_and_is_idempotent(x50_pair):
    ref, ours, x, expected = x50_pair
    assert optimize_for_inference(ours) is ours
    with torch.no_grad():
        once = ours(x)
        state = copy.deepcopy(ours.state_dict())
        optimize_for_inference(ours)
        twice = ours(x)
    assert max_relative_error(once, expected) < FP32_TOL
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in state.items())
    assert max_relative_error(twice, once) == 0.0
    # The public name resolves lazily to the same function.
    assert resnext_det.optimize_for_inference is optimize_for_inference


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stride1_1x1(model: nn.Module) -> list[nn.Conv2d]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
    ]


def test_onednn_1x1_changes_the_kernel_not_the_numbers(x50_pair, one_thread):
    """On one thread every stride-1 1x1 conv of X-50-32x4d (real width) is sent to oneDNN: the
    outputs and the gradients stay those of the model before (fp32 rounding), a second call
    changes nothing; optimize_for_inference applies it only when asked, whatever the thread
    count of the process."""
    ref, _, x, expected = x50_pair

    def fresh() -> nn.Module:  # the fixture's model may be optimised by an earlier test
        net = make_resnext(ResNeXtSpec(depth=50, cardinality=32, width_per_group=4))
        net.load_state_dict(ref.state_dict())
        return net

    net = fresh().train()
    convs = _stride1_1x1(net)
    x = x.clone().requires_grad_(True)
    before = net(x)
    sum(v.sum() for v in before.values()).backward()
    grads = [x.grad.clone()] + [c.weight.grad.clone() for c in convs]
    net.zero_grad(set_to_none=True)
    x.grad = None
    assert onednn_1x1_convolutions(net) == len(convs) == 33  # conv1, conv3 x 16; res2 shortcut
    assert onednn_1x1_convolutions(net) == 0 and all(c.dilation == (2, 2) for c in convs)
    after = net(x)
    sum(v.sum() for v in after.values()).backward()
    assert max_relative_error(after, before) < 1e-5
    new_grads = [x.grad] + [c.weight.grad for c in convs]
    assert max(max_relative_error(a, b) for a, b in zip(new_grads, grads)) < 1e-4
    # The same module whatever the process's thread count: the caller asks for the routing.
    for threads in (1, 2):
        torch.set_num_threads(threads)
        assert all(c.dilation == (1, 1) for c in _stride1_1x1(optimize_for_inference(fresh())))
    torch.set_num_threads(1)
    optimised = optimize_for_inference(fresh(), onednn_1x1=True)
    assert all(c.dilation == (2, 2) for c in _stride1_1x1(optimised))
    with torch.no_grad():
        assert max_relative_error(optimised(x), expected) < FP32_TOL


_ONEDNN_CALLS = """
import torch, torch.nn.functional as F
torch.set_num_threads(1)
x = torch.randn(1, 64, 32, 32).contiguous(memory_format=torch.channels_last)
w = torch.randn(64, 64, 1, 1).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    F.conv2d(x, w)
    print("--dilated--", flush=True)
    F.conv2d(x, w, dilation=2)
"""


def test_pytorch_still_keeps_single_thread_1x1_convolutions_from_onednn():
    """The rule onednn_1x1_convolutions works around, read from oneDNN's own log: on one thread
    a plain 1x1 conv does not reach oneDNN, a dilated one does. If the first half ever fails,
    PyTorch dropped the rule and the workaround can go."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _ONEDNN_CALLS], env=env, capture_output=True, text=True, check=True
    ).stdout
    plain, dilated = out.split("--dilated--")
    executed = [line for line in dilated.splitlines() if ",exec," in line and "conv" in line]
    assert executed, out  # oneDNN ran the dilated one (and logs its calls)
    assert not [line for line in plain.splitlines() if ",exec," in line and "conv" in line]


def test_bf16_autocast_within_tolerance(x50_pair):
    _, ours, x, expected = x50_pair
    optimize_for_inference(ours)
    with torch.no_grad(), autocast("cpu", "bfloat16"):
        actual = ours(x)
    assert actual["res5"].dtype == torch.bfloat16
    err = max_relative_error({k: v.float() for k, v in actual.items()}, expected)
    assert 0.0 < err < BF16_TOL


def test_autocast_rejects_unknown_dtype():
    bad = r"one of \['float32', 'bfloat16', 'float16'\].*'fp8'"
    with pytest.raises(ValueError, match=bad), autocast("cpu", "fp8"):
        pass


def test_apply_inference_config():
    cfg = tiny_cfg()
    model = build_model(cfg)
    assert cfg.MODEL.RESNEXT.OPTIMIZE_FOR_INFERENCE and not cfg.MODEL.RESNEXT.COMPILE
    apply_inference_config(model, cfg)
    assert not model.training and _norms(model) == []
    assert model.backbone.bottom_up.channels_last
    assert cfg.MODEL.RESNEXT.KEEP_FREED_MEMORY  # CPU inference keeps freed memory by default


# ---------------------------------------------------------------------------------------------
# CPU training settings (cfg.CPU_TRAINING): what the trainer applies by default.

# The default CPU training settings (channels_last, bf16 autocast) against fp32 channels-first
# from the same seed, same data, 30 iterations of the tiny detector: the mean total loss of the
# last 10 iterations within this (relative). Measured 0.6% (first iteration 1.4%: bf16 perturbs
# the proposals sampled, so the curves drift apart slowly); a broken path (no learning, NaN,
# a different loss) is off by far more.
CPU_TRAIN_LOSS_TOL = 0.10


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def _tiny_trainer(ds, out_dir, *opts):
    from resnext_det.commands.train import argument_parser
    from resnext_det.training import Trainer, setup

    argv = ["--config-file", str(REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml")]
    for split in ("train", "val"):
        root = ds.train_image_root if split == "train" else ds.val_image_root
        argv += ["--register", f"synthetic_{split}", str(getattr(ds, f"{split}_json")), str(root)]
    argv += ["OUTPUT_DIR", str(out_dir), "DATASETS.TEST", "()", *opts]
    trainer = Trainer(setup(argument_parser().parse_args(argv)))
    trainer.resume_or_load(resume=False)
    return trainer


def test_trainer_applies_the_cpu_training_defaults(tmp_path, tiny_data):
    """The trainer's fast path is cpu_training_settings(cfg), the record the benchmark's
    cpu_train_defaults setting times; ENABLED False is detectron2's fp32 NCHW trainer. The
    trainer changes its model, never the process: the thread count is the command's."""
    from resnext_det.speed import cpu_training_settings, native_bf16

    threads = torch.get_num_threads()
    try:
        trainer = _tiny_trainer(tiny_data, tmp_path / "a", "CPU_TRAINING.NUM_THREADS", "1")
        s = trainer.cpu_training
        assert s == cpu_training_settings(trainer.cfg) and s.num_threads == 1
        assert s.keep_freed_memory and s.onednn_1x1
        assert torch.get_num_threads() == threads
        # One thread: the 1x1 convolutions go to oneDNN (set after the thread count).
        assert trainer.model.backbone.bottom_up.res3[0].conv3.dilation == (2, 2)
        conv = trainer.model.backbone.bottom_up.res3[0].conv2.weight
        assert s.channels_last and conv.is_contiguous(memory_format=torch.channels_last)
        pooler = trainer.model.roi_heads.box_pooler.level_poolers[0]
        assert type(pooler).__name__ == "ChannelsLastROIAlign"  # RoIs pooled on the NHWC maps
        assert (
            trainer._trainer.amp == native_bf16() and trainer._trainer.amp_dtype == torch.bfloat16
        )
    finally:
        torch.set_num_threads(threads)
    plain = _tiny_trainer(tiny_data, tmp_path / "b", "CPU_TRAINING.ENABLED", "False")
    assert plain.cpu_training is None and not plain._trainer.amp
    conv = plain.model.backbone.bottom_up.res3[0].conv2.weight
    assert not conv.is_contiguous(memory_format=torch.channels_last)
    assert plain.model.backbone.bottom_up.res3[0].conv3.dilation == (1, 1)
    assert type(plain.model.roi_heads.box_pooler.level_poolers[0]).__name__ == "ROIAlign"
    # Torch's default thread count (0): oneDNN 1x1 only pays off on one thread, so not applied.
    many = _tiny_trainer(tiny_data, tmp_path / "c", "CPU_TRAINING.NUM_THREADS", "0")
    assert not many.cpu_training.onednn_1x1
    assert many.model.backbone.bottom_up.res3[0].conv3.dilation == (1, 1)


def test_cpu_training_settings_errors():
    from resnext_det.speed import cpu_training_settings

    cfg = tiny_cfg()
    cfg.CPU_TRAINING.AMP_DTYPE = "float16"
    with pytest.raises(ValueError, match=r"CPU_TRAINING.AMP_DTYPE must be one of.*'float16'"):
        cpu_training_settings(cfg)
    cfg.CPU_TRAINING.AMP_DTYPE = ""
    cfg.CPU_TRAINING.NUM_THREADS = -1
    with pytest.raises(ValueError, match=r"CPU_TRAINING.NUM_THREADS must be an integer >= 0"):
        cpu_training_settings(cfg)
    cfg.CPU_TRAINING.NUM_THREADS = 0
    assert cpu_training_settings(cfg).amp_dtype == ""  # fp32 asked for, fp32 given
    cfg.CPU_TRAINING.ENABLED = False
    cfg.SOLVER.AMP.ENABLED = True  # detectron2's switch still means bf16 on the CPU
    assert cpu_training_settings(cfg).amp_dtype == "bfloat16"


def test_default_cpu_training_losses_stay_near_fp32(tmp_path, tiny_data):
    """30 iterations of the tiny detector with the defaults and with fp32 channels-first."""

    def losses(name, *opts):
        trainer = _tiny_trainer(
            tiny_data, tmp_path / name, "SOLVER.MAX_ITER", "30", "SOLVER.STEPS", "(25,)",
            "SOLVER.CHECKPOINT_PERIOD", "1000", "CPU_TRAINING.NUM_THREADS", "1", *opts,
        )  # fmt: skip
        trainer.train()
        return [v for v, _ in trainer.storage.history("total_loss").values()]

    threads = torch.get_num_threads()
    try:
        fast = losses("fast")
        fp32 = losses("fp32", "CPU_TRAINING.CHANNELS_LAST", "False", "CPU_TRAINING.AMP_DTYPE", "")
    finally:
        torch.set_num_threads(threads)
    assert len(fast) == len(fp32) == 30
    # The first forward differs by bf16 rounding only.
    assert fast[0] == pytest.approx(fp32[0], rel=0.05)
    assert fast != fp32  # bf16 (where native) or at least channels_last changed the arithmetic
    last_fast, last_fp32 = sum(fast[-10:]) / 10, sum(fp32[-10:]) / 10
    assert last_fp32 < fp32[0] * 0.8, "the tiny detector should learn in 30 iterations"
    print(f"fp32 {fp32[0]:.4f} -> {last_fp32:.4f}; defaults {fast[0]:.4f} -> {last_fast:.4f}")
    assert abs(last_fast - last_fp32) <= CPU_TRAIN_LOSS_TOL * last_fp32


def test_the_bf16_fallback_is_said_once_per_process(monkeypatch, caplog):
    """A CPU without native bf16 runs CPU_TRAINING.AMP_DTYPE bfloat16 in fp32 and says so once,
    though a command resolves the settings more than once (validation, then the trainer)."""
    from resnext_det import speed
    from resnext_det.config import add_resnext_config

    cfg = add_resnext_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.CPU_TRAINING.AMP_DTYPE = "bfloat16"
    monkeypatch.setattr(speed, "native_bf16", lambda: False)
    speed._say_bf16_falls_back.cache_clear()
    with caplog.at_level(logging.INFO, logger=speed.logger.name):
        settings = [speed.cpu_training_settings(cfg) for _ in range(3)]
    assert all(s.amp_dtype == "" for s in settings)
    assert [r.getMessage() for r in caplog.records].count(
        "CPU_TRAINING.AMP_DTYPE bfloat16: this CPU has no native bf16; fp32"
    ) == 1
