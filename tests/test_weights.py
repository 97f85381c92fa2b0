"""Pretrained weights: every layout loads exactly, conventions follow the file, bad files fail.

Checkpoints are made here from the real torchvision and timm model classes (random weights with
randomised BatchNorm statistics, fixed seeds) and from detectron2's own ResNeXt-FPN detector, so
the strongest checks compare against code this project did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import runpy
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import RACCOON, REPO, randomize_norm_stats, tiny_cfg
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import resnext_det
from resnext_det import ResNeXtSpec, make_resnext
from resnext_det.weights import (
    ArchitectureMismatchError,
    CheckpointError,
    ResNeXtCheckpointer,
    configure_for_weights,
    detectron2_to_torchvision,
    explicit_keys,
    load_pretrained,
    read_weights,
    torchvision_to_detectron2,
)

timm = pytest.importorskip("timm")

RGB_MEAN, RGB_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
BGR_MEAN, BGR_STD = [103.53, 116.28, 123.675], [57.375, 57.12, 58.395]
EPS = 1e-5

# torchvision name -> (torchvision constructor, ResNeXtSpec arguments), from the one VARIANTS table
TORCHVISION = {
    v.torchvision: (
        getattr(torchvision.models, v.torchvision),
        dict(
            depth=v.spec.depth,
            cardinality=v.spec.cardinality,
            width_per_group=v.spec.width_per_group,
        ),
    )
    for v in resnext_det.VARIANTS.values()
    if v.torchvision in ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "resnet50")
}


def small_torchvision(seed: int = 3) -> torch.nn.Module:
    """torchvision's own ResNet class as an X-26-4x4d (blocks 2-2-2-2): real names, fast."""
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(seed)
    model = ResNet(Bottleneck, [2, 2, 2, 2], groups=4, width_per_group=4)
    return randomize_norm_stats(model, seed).eval()


SMALL = dict(depth=26, cardinality=4, width_per_group=4)


def torchvision_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet forward up to layer4 (its own modules, in its own order)."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x max |expected| {scale:.3g}"


def caffe2_blobs(tv_state: dict[str, torch.Tensor], fused: bool = True) -> dict[str, np.ndarray]:
    """Detectron's blob names for a torchvision state_dict; with ``fused``, BN folded into an
    affine scale ``_bn_s`` and bias ``_bn_b`` as Detectron stores its ImageNet models."""
    import re

    blobs: dict[str, np.ndarray] = {}
    branch = {"1": "branch2a", "2": "branch2b", "3": "branch2c"}

    def norm(prefix: str, bn: str) -> None:
        w, b = tv_state[f"{bn}.weight"].double(), tv_state[f"{bn}.bias"].double()
        mean, var = tv_state[f"{bn}.running_mean"].double(), tv_state[f"{bn}.running_var"].double()
        if fused:
            scale = w / torch.sqrt(var + EPS)
            blobs[f"{prefix}_bn_s"] = scale.float().numpy()
            blobs[f"{prefix}_bn_b"] = (b - mean * scale).float().numpy()
        else:
            blobs[f"{prefix}_bn_s"] = w.float().numpy()
            blobs[f"{prefix}_bn_b"] = b.float().numpy()
            blobs[f"{prefix}_bn_rm"] = mean.float().numpy()
            blobs[f"{prefix}_bn_riv"] = var.float().numpy()

    blobs["conv1_w"] = tv_state["conv1.weight"].numpy()
    norm("res_conv1", "bn1")
    for key, value in tv_state.items():
        m = re.match(r"layer(\d)\.(\d+)\.(conv(\d)|downsample\.0)\.weight$", key)
        if m is None:
            continue
        stage, block = int(m[1]) + 1, m[2]
        name = f"res{stage}_{block}_{branch[m[4]] if m[4] else 'branch1'}"
        blobs[f"{name}_w"] = value.numpy()
        norm(
            name,
            key.replace("conv", "bn").replace("downsample.0", "downsample.1")[: -len(".weight")],
        )
    blobs["pred_w"], blobs["pred_b"] = tv_state["fc.weight"].numpy(), tv_state["fc.bias"].numpy()
    blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])  # solver state, to be ignored
    return blobs


def write_pickle(obj, path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of Detectron's Python 2 files


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


_SOURCES: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def torchvision_source(tmp_path_factory, x64):
    """Build each torchvision model once per module: (model, .pth path, layer4 features)."""

    def get(name: str):
        if name not in _SOURCES:
            torch.manual_seed(0)
            model = randomize_norm_stats(TORCHVISION[name][0](), seed=1).eval()
            path = tmp_path_factory.mktemp("tv") / f"{name}.pth"
            torch.save(model.state_dict(), path)
            with torch.no_grad():
                _SOURCES[name] = (model, path, torchvision_features(model, x64))
        return _SOURCES[name]

    yield get
    _SOURCES.clear()


def check_backbone(path, spec_args, form, x, expected, **load_kwargs):
    net = make_resnext(ResNeXtSpec(**spec_args, block_form=form)).eval()
    report = load_pretrained(net, path, **load_kwargs)
    assert not report.missing and not report.unexpected and not report.shape_mismatched
    with torch.no_grad():
        assert_close_rel(net(x)["res5"], expected)
    return report


# ---------------------------------------------------------------- torchvision / timm equivalence


@pytest.mark.parametrize(
    "name,form",
    [
        ("resnext50_32x4d", "grouped"),
        ("resnext50_32x4d", "aggregated"),
        ("resnext50_32x4d", "concat"),
        ("resnext101_32x8d", "grouped"),
        pytest.param("resnet50", "grouped", marks=pytest.mark.slow),
        pytest.param("resnext101_32x8d", "aggregated", marks=pytest.mark.slow),
        pytest.param("resnext101_32x8d", "concat", marks=pytest.mark.slow),
        pytest.param("resnext101_64x4d", "grouped", marks=pytest.mark.slow),
        pytest.param("resnext101_64x4d", "aggregated", marks=pytest.mark.slow),
        pytest.param("resnext101_64x4d", "concat", marks=pytest.mark.slow),
    ],
)
def test_torchvision_weights_give_torchvision_features(torchvision_source, x64, name, form):
    model, path, expected = torchvision_source(name)
    report = check_backbone(path, TORCHVISION[name][1], form, x64, expected)
    assert report.layout == "torchvision"
    assert report.architecture.name == ResNeXtSpec(**TORCHVISION[name][1]).name
    assert any(k.startswith("fc.") for k in report.dropped)  # the classifier is reported, not lost


def test_timm_safetensors_weights_give_timm_features(tmp_path, x64):
    from safetensors.torch import save_file

    model = randomize_norm_stats(timm.create_model("resnext50_32x4d", pretrained=False), 2).eval()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    with torch.no_grad():
        expected = model.forward_features(x64)
    report = check_backbone(
        path, dict(depth=50, cardinality=32, width_per_group=4), "grouped", x64, expected
    )
    assert report.layout == "torchvision" and "safetensors" in read_weights(path).container


def test_legacy_torch_format_and_wrapped_state_dict(torchvision_source, tmp_path, x64):
    model, _, expected = torchvision_source("resnext50_32x4d")
    path = tmp_path / "legacy.bin"  # torch's pre-1.6 format, wrapped as many training scripts do
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
        path,
        _use_new_zipfile_serialization=False,
    )
    assert read_weights(path).container == "torch"
    check_backbone(
        path, dict(depth=50, cardinality=32, width_per_group=4), "grouped", x64, expected
    )


def test_inverse_converter_loads_strict_into_torchvision_and_timm():
    from timm.models.resnet import Bottleneck as TimmBottleneck
    from timm.models.resnet import ResNet as TimmResNet

    model = small_torchvision()
    converted = torchvision_to_detectron2(model.state_dict())
    ours, mapping = converted.resnet, converted.mapping
    assert len(ours) == len(model.state_dict()) and set(mapping.values()) == set(model.state_dict())
    # from a path form: split into paths by the aggregated form's load hook, then back
    net = make_resnext(ResNeXtSpec(**SMALL, block_form="aggregated"), num_classes=1000)
    net.load_state_dict({k: v for k, v in ours.items() if "num_batches" not in k})
    back = detectron2_to_torchvision(net.state_dict())
    timm_model = TimmResNet(TimmBottleneck, [2, 2, 2, 2], cardinality=4, base_width=4)
    for target in (small_torchvision(seed=9), timm_model):
        target.load_state_dict(back, strict=True)
        for k, v in target.state_dict().items():
            if "num_batches" not in k:
                torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="not in the detectron2 bottom-up ResNet/ResNeXt layout"):
        detectron2_to_torchvision({"fpn_lateral2.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "name,variant",
    [
        ("resnet26d", "deep 3-conv stem"),
        ("resnet26d", "avg-down shortcut"),
        ("seresnext26d_32x4d", "squeeze-excitation"),
        ("resnet18", "BasicBlock"),
    ],
)
def test_timm_variants_of_other_architectures_are_refused(tmp_path, name, variant):
    path = tmp_path / f"{name}.pth"
    torch.save(timm.create_model(name, pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match=f"holds another architecture: .*{variant}"):
        load_pretrained(make_resnext(ResNeXtSpec(50, 32, 4)), path)


# ---------------------------------------------------------------------------------- Caffe2 .pkl


def test_caffe2_fused_pkl_gives_torchvision_features(torchvision_source, tmp_path, x64):
    model, _, expected = torchvision_source("resnext50_32x4d")
    path = tmp_path / "X-50-32x4d.pkl"
    write_pickle(caffe2_blobs(model.state_dict(), fused=True), path)
    net = make_resnext(ResNeXtSpec(50, 32, 4)).eval()
    report = load_pretrained(net, path)
    assert report.layout == "caffe2" and not report.missing and not report.unexpected
    assert ("res2.0.conv1.weight", "res2_0_branch2a_w", (128, 64, 1, 1)) in report.matched
    with torch.no_grad():
        assert_close_rel(net(x64)["res5"], expected)
    # FrozenBN applies the fused scale exactly: w / sqrt(running_var + eps) == w
    norm = net.res3[0].conv2.norm
    torch.testing.assert_close(norm.running_var + norm.eps, torch.ones_like(norm.running_var))


def test_caffe2_blobs_container_with_running_stats(torchvision_source, tmp_path, x64):
    model, _, expected = torchvision_source("resnext50_32x4d")
    blobs = caffe2_blobs(model.state_dict(), fused=False)
    blobs["rpn_cls_logits_fpn2_w"] = np.zeros((3, 256, 1, 1), np.float32)  # a detector's head
    path = tmp_path / "model_final.pkl"
    write_pickle({"blobs": blobs, "cfg": "yaml text"}, path)
    net = make_resnext(ResNeXtSpec(50, 32, 4)).eval()
    report = load_pretrained(net, path)
    assert report.unexpected == ["rpn_cls_logits_fpn2_w"]
    with torch.no_grad():
        assert_close_rel(net(x64)["res5"], expected)


# ------------------------------------------------------------------------------- conventions


def _cfg(**resnets):
    cfg = tiny_cfg()
    for k, v in resnets.items():
        setattr(cfg.MODEL.RESNETS, k, v)
    return cfg


def test_configure_for_weights_follows_the_file(tmp_path):
    model = small_torchvision()
    tv_path = tmp_path / "x26.pth"
    torch.save(model.state_dict(), tv_path)
    x50 = dict(
        DEPTH=26, NUM_GROUPS=4, WIDTH_PER_GROUP=4, STEM_OUT_CHANNELS=64, RES2_OUT_CHANNELS=256
    )
    cfg = _cfg(**x50)
    changes = configure_for_weights(cfg, tv_path)
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.PIXEL_MEAN == RGB_MEAN
    assert cfg.MODEL.PIXEL_STD == RGB_STD and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    # detectron2's default STRIDE_IN_1X1 is True (MSRA's ResNets): torchvision's is in the 3x3
    assert set(changes) == {
        "INPUT.FORMAT",
        "MODEL.PIXEL_MEAN",
        "MODEL.PIXEL_STD",
        "MODEL.RESNETS.STRIDE_IN_1X1",
    }
    assert configure_for_weights(cfg, tv_path) == {}  # idempotent

    fused = tmp_path / "X.pkl"
    write_pickle(caffe2_blobs(model.state_dict(), fused=True), fused)
    cfg = _cfg(**x50)
    cfg.MODEL.WEIGHTS = str(fused)
    configure_for_weights(cfg)  # Detectron's fused ResNeXt: BGR, PIXEL_STD 1, stride in 3x3
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.PIXEL_MEAN == BGR_MEAN
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0] and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False

    full = tmp_path / "X-full.pkl"
    write_pickle(caffe2_blobs(model.state_dict(), fused=False), full)
    cfg = _cfg(**x50)
    configure_for_weights(cfg, full)  # as detectron2's re-converted FAIR/X-101-32x8d.pkl
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.PIXEL_STD == BGR_STD


def test_configure_for_weights_caffe2_resnets(tmp_path):
    from torchvision.models.resnet import Bottleneck, ResNet

    # torchvision's ResNet class with C = 1 (a ResNet, as MSRA's), narrow so that it is fast
    resnet = ResNet(Bottleneck, [2, 2, 2, 2], width_per_group=16)
    r50 = randomize_norm_stats(resnet, 4).state_dict()
    r50_spec = dict(
        DEPTH=26, NUM_GROUPS=1, WIDTH_PER_GROUP=16, STEM_OUT_CHANNELS=64, RES2_OUT_CHANNELS=256
    )
    msra = tmp_path / "R.pkl"
    write_pickle(caffe2_blobs(r50, fused=True), msra)
    cfg = _cfg(**r50_spec)
    configure_for_weights(cfg, msra)  # MSRA's fused ResNet: stride in the 1x1
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]

    unknown = tmp_path / "R-stats.pkl"
    write_pickle(caffe2_blobs(r50, fused=False), unknown)
    with pytest.raises(ValueError, match=r"cannot tell .*MODEL.PIXEL_STD.*STRIDE_IN_1X1"):
        configure_for_weights(_cfg(**r50_spec), unknown)
    cfg = _cfg(**r50_spec)  # pinned by the user: accepted, and BGR still set from the file
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]
    configure_for_weights(cfg, unknown, pinned={"MODEL.PIXEL_STD", "MODEL.RESNETS.STRIDE_IN_1X1"})
    assert cfg.INPUT.FORMAT == "BGR"
    write_pickle({**caffe2_blobs(r50, fused=False), "__author__": "MSRA"}, unknown)
    cfg = _cfg(**r50_spec)
    configure_for_weights(cfg, unknown)
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True


def test_configure_for_weights_refuses_pinned_conflicts(torchvision_source, tmp_path):
    _, tv_path, _ = torchvision_source("resnext50_32x4d")
    x50 = dict(
        DEPTH=50, NUM_GROUPS=32, WIDTH_PER_GROUP=4, STEM_OUT_CHANNELS=64, RES2_OUT_CHANNELS=256
    )
    cfg = _cfg(**x50)  # INPUT.FORMAT "BGR" is the default: only an explicit pin conflicts
    with pytest.raises(ValueError, match=r"INPUT.FORMAT is set to 'BGR', but .* need 'RGB'"):
        configure_for_weights(cfg, tv_path, pinned={"INPUT.FORMAT"})
    cfg = _cfg(**x50)  # without pinned=, a value other than detectron2's default counts as pinned
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=r"MODEL.PIXEL_STD is set to \[1.0, 1.0, 2.0\]"):
        configure_for_weights(cfg, tv_path)
    with pytest.raises(
        ValueError,
        match=r"holds a X-50-32x4d backbone but the config builds "
        r"X-26-2x4d.*DEPTH is 26 but the file has 50",
    ):
        configure_for_weights(tiny_cfg(), tv_path)

    yaml = tmp_path / "cfg.yaml"
    yaml.write_text(f'_BASE_: "{REPO / "configs" / "Base-RCNN-FPN.yaml"}"\nINPUT:\n  FORMAT: BGR\n')
    keys = explicit_keys(str(yaml), ["MODEL.PIXEL_STD", "[1,1,1]"])
    assert {"INPUT.FORMAT", "MODEL.PIXEL_STD", "MODEL.BACKBONE.NAME"} <= keys
    assert "MODEL.PIXEL_MEAN" not in keys


# ------------------------------------------------------------------------ detectron2 checkpoints


def _image() -> np.ndarray:
    """A real photo (BGR, ~128 px) or, without the data, a fixed random one."""
    import cv2

    images = sorted(RACCOON.glob("images/*.jpg")) or sorted(RACCOON.glob("**/*.jpg"))
    if images:
        img = cv2.imread(str(images[0]))
        scale = 128 / min(img.shape[:2])
        return cv2.resize(img, None, fx=scale, fy=scale)
    return np.random.default_rng(0).integers(0, 255, (128, 160, 3), dtype=np.uint8)


@pytest.mark.slow
def test_detectron2_x101_fpn_checkpoint_gives_same_detections(tmp_path):
    from detectron2 import model_zoo

    cfg = get_cfg()
    resnext_det.add_resnext_config(cfg)
    cfg.merge_from_file(
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml")
    )
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random heads score low: keep every box
    torch.manual_seed(0)
    reference = randomize_norm_stats(build_model(cfg), seed=5).eval()
    assert type(reference.backbone.bottom_up).__name__ == "ResNet"  # detectron2's own
    with torch.no_grad():  # spread the random class scores so that ranks are well separated
        reference.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
    path = tmp_path / "model_final.pth"
    torch.save({"model": reference.state_dict(), "iteration": 7}, path)

    cfg.MODEL.BACKBONE.NAME = "build_resnext_fpn_backbone"
    cfg.MODEL.WEIGHTS = str(path)
    torch.manual_seed(1)
    ours = build_model(cfg).eval()
    assert isinstance(ours.backbone.bottom_up, resnext_det.ResNeXt)
    extra = ResNeXtCheckpointer(ours).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert extra.get("iteration") == 7

    img = _image()
    inputs = [
        {
            "image": torch.as_tensor(img.transpose(2, 0, 1).copy()),
            "height": img.shape[0],
            "width": img.shape[1],
        }
    ]
    with torch.no_grad():
        want = reference(inputs)[0]["instances"]
        got = ours(inputs)[0]["instances"]
    assert len(want) > 0 and len(got) == len(want)
    torch.testing.assert_close(got.pred_boxes.tensor, want.pred_boxes.tensor, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.pred_classes, want.pred_classes)


def test_detector_checkpoint_into_detector_backbone_and_bare_resnet(tmp_path):
    torch.manual_seed(0)
    source = randomize_norm_stats(build_model(tiny_cfg()), 6).eval()
    path = tmp_path / "det.pth"
    torch.save({"model": source.state_dict()}, path)
    for form in ("grouped", "concat"):
        cfg = tiny_cfg()
        cfg.MODEL.RESNEXT.BLOCK_FORM = form
        target = build_model(cfg).eval()
        report = load_pretrained(target, path, strict=True)
        assert not report.missing and not report.unexpected
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            for k, v in source.backbone(x).items():
                assert_close_rel(target.backbone(x)[k], v, rel=1e-5)
    # tiny_cfg keeps detectron2's default STRIDE_IN_1X1 (True)
    spec = ResNeXtSpec(26, 2, 4, stem_out_channels=8, res2_out_channels=16, stride_in_1x1=True)
    bare = make_resnext(spec).eval()
    report = load_pretrained(bare, path)  # the detector's ResNet only; heads are reported
    assert any(k.startswith("roi_heads.") for k in report.unexpected) and not report.missing
    with torch.no_grad():
        assert_close_rel(bare(x)["res5"], source.backbone.bottom_up(x)["res5"], rel=1e-5)


def test_c4_detector_gets_res5_in_roi_heads(tmp_path):
    cfg = tiny_cfg(DEPTH=50, OUT_FEATURES=["res4"])  # Res5ROIHeads builds 3 res5 blocks
    cfg.MODEL.BACKBONE.NAME = "build_resnext_backbone"
    cfg.MODEL.RPN.IN_FEATURES = cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64]]
    model = build_model(cfg)
    spec = ResNeXtSpec(50, 2, 4, stem_out_channels=8, res2_out_channels=16, stride_in_1x1=True)
    source = randomize_norm_stats(make_resnext(spec), 8)
    path = tmp_path / "x50-tiny.pth"
    torch.save(detectron2_to_torchvision(source.state_dict()), path)
    report = load_pretrained(model, path, strict=True)  # prefix "backbone." + "roi_heads.res5."
    assert ("roi_heads.res5.2.conv3.weight", "layer4.2.conv3.weight", (128, 64, 1, 1)) in (
        report.matched
    )
    for key, value in source.state_dict().items():
        target = f"roi_heads.{key}" if key.startswith("res5.") else f"backbone.{key}"
        assert torch.equal(model.state_dict()[target], value), key


def test_checkpointer_reads_torchvision_layout_and_resumes(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    source = randomize_norm_stats(build_model(cfg), 7)
    tv_path = tmp_path / "backbone-tv.pth"  # the export agent's torchvision-layout file + sidecar
    torch.save(detectron2_to_torchvision(source.backbone.bottom_up.state_dict()), tv_path)
    (tmp_path / "backbone-tv.pth.json").write_text(
        json.dumps(
            {
                "sha256": hashlib.sha256(tv_path.read_bytes()).hexdigest(),  # its own file's
                "conventions": {
                    "input_format": "BGR",
                    "pixel_mean": BGR_MEAN,
                    "pixel_std": [1, 1, 1],
                    "stride_in_1x1": False,
                },
            }
        )
    )
    assert read_weights(tv_path).conventions.input_format == "BGR"  # the sidecar wins

    cfg.MODEL.WEIGHTS = str(tv_path)
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = ResNeXtCheckpointer(model, str(tmp_path / "out"), optimizer=optimizer)
    assert ckpt.resume_or_load(cfg.MODEL.WEIGHTS, resume=True) == {}  # nothing to resume yet
    for k, v in source.backbone.bottom_up.state_dict().items():
        torch.testing.assert_close(model.backbone.bottom_up.state_dict()[k], v, rtol=0, atol=0)

    from detectron2.utils.events import EventStorage

    with EventStorage(0):  # one SGD step, so that there is optimizer state to resume
        sum(model(_training_batch()).values()).backward()
    optimizer.step()
    ckpt.save("model_0000009", iteration=9)
    assert sorted(os.listdir(tmp_path / "out")) == ["last_checkpoint", "model_0000009.pth"]
    saved = read_weights(tmp_path / "out" / "model_0000009.pth")
    assert saved.conventions.pixel_mean == tuple(cfg.MODEL.PIXEL_MEAN)

    fresh = build_model(cfg)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    extra = ResNeXtCheckpointer(fresh, str(tmp_path / "out"), optimizer=fresh_opt).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=True
    )
    assert extra["iteration"] == 9 and fresh_opt.state_dict()["state"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)


def _training_batch():
    from detectron2.structures import Boxes, Instances

    inst = Instances((64, 80))
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0]]))
    inst.gt_classes = torch.tensor([3])
    return [
        {"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8).float(), "instances": inst}
    ]


def test_convert_weights_tool(tmp_path, x64, capsys):
    model = small_torchvision()
    src = tmp_path / "x26.pth"
    torch.save(model.state_dict(), src)
    with torch.no_grad():
        expected = torchvision_features(model, x64)
    out = tmp_path / "converted.pkl"
    # run the script as `python tools/convert_weights.py SRC OUT` does, in this process (fast)
    argv = sys.argv
    sys.argv = [str(REPO / "tools" / "convert_weights.py"), str(src), str(out)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_info.value.code == 0
    stdout = capsys.readouterr().out
    for line in (
        'FORMAT: "RGB"',
        "PIXEL_MEAN: [123.675, 116.28, 103.53]",
        "PIXEL_STD: [58.395, 57.12, 57.375]",
        "STRIDE_IN_1X1: False",
        "DEPTH: 26",
        "NUM_GROUPS: 4",
        "WIDTH_PER_GROUP: 4",
    ):
        assert line in stdout
    assert read_weights(out).conventions.input_format == "RGB"
    check_backbone(out, SMALL, "grouped", x64, expected)
    # stock detectron2 reads it too (its suffix-matching heuristics, from the pickle)
    from detectron2.checkpoint import DetectionCheckpointer

    net = make_resnext(ResNeXtSpec(**SMALL)).eval()
    DetectionCheckpointer(net).load(str(out))
    with torch.no_grad():
        assert_close_rel(net(x64)["res5"], expected)


# ---------------------------------------------------------------------------- safety and errors


class _Exploit:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_does_not_run(tmp_path):
    pwned = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    write_pickle({"conv1_w": _Exploit(str(pwned))}, path)
    with pytest.raises(
        CheckpointError, match=r"R-50.pkl.*refused to load global '(posix|os)\.system'"
    ):
        load_pretrained(make_resnext(ResNeXtSpec(50, 32, 4)), path)
    torch_path = tmp_path / "evil.pth"
    torch.save({"model": _Exploit(str(pwned))}, torch_path)
    with pytest.raises(CheckpointError, match=r"evil.pth.*weights_only"):
        read_weights(torch_path)
    assert not pwned.exists()


def test_wrong_architecture_names_key_shapes_and_architectures(tmp_path):
    small = dict(stem_out_channels=8, res2_out_channels=16)
    path = tmp_path / "x26.pth"
    source = make_resnext(ResNeXtSpec(26, 2, 4, **small))
    torch.save(detectron2_to_torchvision(source.state_dict()), path)
    other_d = make_resnext(ResNeXtSpec(26, 4, 2, **small))
    with pytest.raises(
        ArchitectureMismatchError,
        match=(
            r"x26.pth' holds a X-26-2x4d ResNet .* but the model is X-26-4x2d: "
            r"'res2.0.conv2.weight' \(checkpoint 'layer1.0.conv2.weight'\) has shape "
            r"\(8, 4, 3, 3\) in the checkpoint but \(8, 2, 3, 3\) in the model"
        ),
    ):
        load_pretrained(other_d, path)
    deeper = make_resnext(ResNeXtSpec(50, 2, 4, **small))
    with pytest.raises(
        ArchitectureMismatchError,
        match=r"X-26-2x4d .* model is X-50-2x4d: model "
        r"key 'res2.2.conv1.weight'",
    ):
        load_pretrained(deeper, path)


def test_truncated_corrupt_and_unknown_files(torchvision_source, tmp_path):
    _, tv_path, _ = torchvision_source("resnext50_32x4d")
    data = tv_path.read_bytes()
    cases = {
        "cut.pth": (
            data[: len(data) // 2],
            r"cut.pth' .* torch file: the file is truncated or corrupt",
        ),
        "cut.pkl": (
            pickle.dumps({"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}, protocol=2)[:500],
            r"cut.pkl' .* pickle file: the file is truncated or corrupt",
        ),
        "empty.pth": (b"", r"empty.pth' is empty"),
        "text.pth": (b"hello, not weights", r"text.pth' is not a checkpoint .* first bytes"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=message):
            read_weights(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "missing.pth")
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"cannot tell the layout .*head.weight"):
        read_weights(tmp_path / "other.pth")


# ------------------------------------------------------------------ presets and Caffe2 GroupNorm


def test_convert_checkpoint_preset_and_its_must_pin_refusal(tmp_path):
    from torchvision.models.resnet import Bottleneck, ResNet

    from resnext_det.weights import PRESETS, convert_checkpoint

    r = randomize_norm_stats(ResNet(Bottleneck, [2, 2, 2, 2], width_per_group=16), 4).state_dict()
    src = tmp_path / "R-stats.pkl"  # a Caffe2 ResNet with BN statistics and no __author__
    write_pickle(caffe2_blobs(r, fused=False), src)
    out = tmp_path / "out.pkl"
    with pytest.raises(ValueError, match=r"cannot tell the input conventions .*Pass a preset"):
        convert_checkpoint(src, out)
    assert not out.exists()
    with pytest.raises(ValueError, match=r"preset must be one of .*msra.*; got 'caffe'"):
        convert_checkpoint(src, out, preset="caffe")
    done = convert_checkpoint(src, out, preset="msra")
    assert done.conventions == PRESETS["msra"]
    assert "STRIDE_IN_1X1: True" in done.yaml and "PIXEL_STD: [1, 1, 1]" in done.yaml
    written = read_weights(out)
    assert written.conventions.cfg_values() == PRESETS["msra"].cfg_values()
    assert done.written == len(written.resnet) and not done.left_out


def test_caffe2_group_norm_file_gets_the_fair_gn_conventions(tmp_path):
    from resnext_det.weights import PRESETS

    blobs = caffe2_blobs(small_torchvision().state_dict(), fused=True)
    gn = {k.replace("_bn_s", "_gn_s").replace("_bn_b", "_gn_b"): v for k, v in blobs.items()}
    path = tmp_path / "R-GN.pkl"  # FAIR's R-50-GN names its norms _gn_s/_gn_b
    write_pickle(gn, path)
    weights = read_weights(path)
    assert weights.conventions.cfg_values() == PRESETS["fair-gn"].cfg_values()
    assert "GroupNorm" in weights.conventions.source
    # GroupNorm has no running statistics: none are made up for it
    assert not any(k.endswith("running_var") for k in weights.resnet)
    assert weights.mapping["res2.0.conv1.norm.weight"] == "res2_0_branch2a_gn_s"
