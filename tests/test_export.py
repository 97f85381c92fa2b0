"""Backbone export: round trips through code this project did not write (torchvision, timm,
detectron2's checkpointer, TorchScript, onnxruntime); block forms, BN folding, bad input, sidecar.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import REPO, randomize_norm_stats, tiny_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler, build_optimizer
from safetensors.torch import load_file
from torch import nn

import resnext_det
from resnext_det import load_pretrained, make_resnext, to_grouped_state_dict
from resnext_det.export import export_backbone
from resnext_det.speed import max_relative_error
from resnext_det.weights import read_weights

TOL = 1e-4
STAGES = ("res2", "res3", "res4", "res5")


def _x50_cfg():
    """X-50-32x4d at its real width (the architecture torchvision/timm build), small heads."""
    cfg = tiny_cfg(
        DEPTH=50,
        NUM_GROUPS=32,
        WIDTH_PER_GROUP=4,
        STEM_OUT_CHANNELS=64,
        RES2_OUT_CHANNELS=256,
        # torchvision and timm stride in the 3x3 conv.
        STRIDE_IN_1X1=False,
    )
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    return cfg


def _save(model: nn.Module, path, **extra) -> None:
    torch.save({"model": model.state_dict(), "iteration": 123, **extra}, path)


@pytest.fixture(scope="module")
def x50(tmp_path_factory):
    """(cfg, detector, checkpoint path) of an X-50-32x4d-FPN Faster R-CNN with random weights."""
    torch.manual_seed(0)
    cfg = _x50_cfg()
    model = randomize_norm_stats(build_model(cfg), seed=1).eval()
    path = tmp_path_factory.mktemp("x50") / "model_final.pth"
    _save(model, path)
    return cfg, model, path


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 50


def _bottom_up_features(model, x):
    with torch.no_grad():
        return model.backbone.bottom_up(x)


def _torchvision_features(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """layer1..layer4 of a torchvision ResNet (the forward of torchvision's resnet.py)."""
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        out = {}
        for name, layer in zip(STAGES, (net.layer1, net.layer2, net.layer3, net.layer4)):
            x = out[name] = layer(x)
    return out


def _read_state_dict(path, container):
    if container == "safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- state-dict formats


@pytest.mark.parametrize("container", ["torch", "safetensors"])
def test_torchvision_round_trip(x50, image, tmp_path, container):
    cfg, model, ckpt = x50
    out = tmp_path / ("x50.safetensors" if container == "safetensors" else "x50.pth")
    result = export_backbone(cfg, ckpt, "torchvision", out)
    assert result.metadata["container"] == container
    sd = _read_state_dict(out, container)

    net = torchvision.models.resnext50_32x4d()
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert (sorted(missing), unexpected) == (["fc.bias", "fc.weight"], [])
    net.fc = nn.Identity()  # and strict=True apart from fc
    net.load_state_dict(sd, strict=True)

    got = _torchvision_features(net.eval(), image)
    expected = _bottom_up_features(model, image)
    assert max_relative_error(got, expected) <= TOL

    # And back into the project through its own reader, which takes the conventions (the
    # detector's BGR, not torchvision's RGB) from the sidecar.
    backbone = make_resnext(model.backbone.bottom_up.spec).eval()
    load_pretrained(backbone, out, strict=True)
    assert read_weights(out).conventions.input_format == "BGR"
    with torch.no_grad():
        assert max_relative_error(backbone(image), expected) <= TOL
    assert result.metadata["load"]["builder"] == "torchvision.models.resnext50_32x4d()"
    assert any(item.startswith("fc ") for item in result.metadata["not_included"])
    assert any(item.startswith("FPN") for item in result.metadata["not_included"])


def test_timm_round_trip(x50, image, tmp_path):
    timm = pytest.importorskip("timm")
    cfg, model, ckpt = x50
    out = tmp_path / "x50_timm.pth"
    result = export_backbone(cfg, ckpt, "timm", out)
    net = timm.create_model("resnext50_32x4d", pretrained=False, num_classes=0).eval()
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)  # fc: Identity
    with torch.no_grad():
        feats = net.forward_intermediates(image, indices=[1, 2, 3, 4], intermediates_only=True)
    got = dict(zip(STAGES, feats))
    assert max_relative_error(got, _bottom_up_features(model, image)) <= TOL
    assert result.metadata["load"]["builder"] == "timm.create_model('resnext50_32x4d')"


def test_detectron2_round_trip_with_fpn(x50, image, tmp_path):
    cfg, model, ckpt = x50
    out = tmp_path / "x50_backbone.pth"
    export_backbone(cfg, ckpt, "detectron2", out, fpn=True)
    data = torch.load(out, weights_only=True)
    assert data["matching_heuristics"] is False and "resnext_det" in data["__author__"]
    assert all(k.startswith(("backbone.bottom_up.", "backbone.fpn_")) for k in data["model"])
    assert any(k.startswith("backbone.fpn_output2.") for k in data["model"])

    # Into a freshly built (differently initialised) detector through detectron2's own loader.
    torch.manual_seed(99)
    fresh = build_model(cfg).eval()
    DetectionCheckpointer(fresh).load(str(out))
    with torch.no_grad():
        got, expected = fresh.backbone(image), model.backbone(image)
    assert sorted(got) == ["p2", "p3", "p4", "p5", "p6"]
    assert max_relative_error(got, expected) <= TOL


def test_safetensors_detectron2_holds_the_same_tensors(tmp_path):
    cfg = tiny_cfg()
    model = randomize_norm_stats(build_model(cfg)).eval()
    _save(model, tmp_path / "ck.pth")
    export_backbone(cfg, tmp_path / "ck.pth", "detectron2", tmp_path / "a.pth")
    export_backbone(cfg, tmp_path / "ck.pth", "detectron2", tmp_path / "a.safetensors")
    pickled = torch.load(tmp_path / "a.pth", weights_only=True)["model"]
    safe = load_file(str(tmp_path / "a.safetensors"))
    assert sorted(pickled) == sorted(safe)
    assert all(torch.equal(pickled[k], safe[k]) for k in safe)
    assert all(k.startswith("backbone.bottom_up.") for k in safe)  # no --fpn: no FPN keys


def test_aggregated_checkpoint_exports_as_grouped(tmp_path):
    """A model trained in form (a): its export equals the export of the same weights saved in the
    grouped form, and reproduces the aggregated model's outputs in a grouped model."""
    cfg_agg = tiny_cfg(NUM_GROUPS=4, WIDTH_PER_GROUP=2)
    cfg_agg.MODEL.RESNEXT.BLOCK_FORM = "aggregated"
    agg = randomize_norm_stats(build_model(cfg_agg), seed=3).eval()
    assert any(".paths.3.conv3." in k for k in agg.state_dict())
    _save(agg, tmp_path / "agg.pth")
    torch.save({"model": to_grouped_state_dict(agg.state_dict())}, tmp_path / "grouped.pth")

    r = export_backbone(cfg_agg, tmp_path / "agg.pth", "detectron2", tmp_path / "a.pth", fpn=True)
    export_backbone(cfg_agg, tmp_path / "grouped.pth", "detectron2", tmp_path / "g.pth", fpn=True)
    a = torch.load(tmp_path / "a.pth", weights_only=True)["model"]
    g = torch.load(tmp_path / "g.pth", weights_only=True)["model"]
    assert not any(".paths." in k for k in a)
    assert sorted(a) == sorted(g) and all(torch.equal(a[k], g[k]) for k in a)
    assert r.metadata["architecture"]["source_block_form"] == "aggregated"
    assert r.metadata["architecture"]["block_form"] == "grouped"

    cfg_grouped = cfg_agg.clone()
    cfg_grouped.MODEL.RESNEXT.BLOCK_FORM = "grouped"
    grouped = build_model(cfg_grouped).eval()
    DetectionCheckpointer(grouped).load(str(tmp_path / "a.pth"))
    x = torch.randn(2, 3, 64, 96) * 50
    with torch.no_grad():
        assert max_relative_error(grouped.backbone(x), agg.backbone(x)) <= TOL

    export_backbone(cfg_agg, tmp_path / "agg.pth", "torchscript", tmp_path / "a.ts", fpn=True)
    traced = torch.jit.load(str(tmp_path / "a.ts"))
    with torch.no_grad():
        expected = agg.backbone(x)
        got = dict(zip(["p2", "p3", "p4", "p5", "p6"], traced(x)))
    assert max_relative_error(got, expected) <= TOL


def _c4_cfg():
    """A C4 Faster R-CNN (backbone stops at res4, res5 lives in Res5ROIHeads, which always has 3
    blocks: depth 50 at tiny widths)."""
    cfg = tiny_cfg(DEPTH=50, OUT_FEATURES=["res4"])
    cfg.MODEL.BACKBONE.NAME = "build_resnext_backbone"
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64]]
    return cfg


def test_c4_checkpoint_round_trip(tmp_path):
    cfg = _c4_cfg()
    model = randomize_norm_stats(build_model(cfg)).eval()
    _save(model, tmp_path / "c4.pth")
    r = export_backbone(cfg, tmp_path / "c4.pth", "detectron2", tmp_path / "bb.pth")
    keys = torch.load(tmp_path / "bb.pth", weights_only=True)["model"]
    assert any(k.startswith("roi_heads.res5.2.") for k in keys)
    assert r.metadata["source"]["layout"] == "C4/DC5 detector"

    fresh = build_model(cfg).eval()
    DetectionCheckpointer(fresh).load(str(tmp_path / "bb.pth"))
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        assert max_relative_error(fresh.backbone(x), model.backbone(x)) <= TOL
        feats = model.backbone(x)["res4"]
        assert max_relative_error(fresh.roi_heads.res5(feats), model.roi_heads.res5(feats)) <= TOL

    # The whole res2..res5 of the C4 model, res5 taken from its ROI head.
    export_backbone(cfg, tmp_path / "c4.pth", "torchscript", tmp_path / "bb.ts")
    with torch.no_grad():
        res2, res3, res4, res5 = torch.jit.load(str(tmp_path / "bb.ts"))(x)
        assert max_relative_error(res4, feats) <= TOL
        assert max_relative_error(res5, model.roi_heads.res5(feats)) <= TOL


def test_torchvision_state_dict_as_input(tmp_path):
    """A bare torchvision ResNeXt state dict is a backbone too: its TorchScript export gives
    torchvision's features."""
    net = torchvision.models.ResNet(
        torchvision.models.resnet.Bottleneck, [2, 2, 2, 2], groups=2, width_per_group=4
    )
    net = randomize_norm_stats(net, seed=4).eval()
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    cfg = tiny_cfg(STEM_OUT_CHANNELS=64, RES2_OUT_CHANNELS=256, STRIDE_IN_1X1=False)
    r = export_backbone(cfg, tmp_path / "tv.pth", "torchscript", tmp_path / "tv.ts")
    assert r.metadata["source"]["layout"] == "torchvision backbone"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got = dict(zip(STAGES, torch.jit.load(str(tmp_path / "tv.ts"))(x)))
    assert max_relative_error(got, _torchvision_features(net, x)) <= TOL


def test_checkpoint_of_detectron2s_own_resnext_fpn(tmp_path):
    """A detector built by detectron2's own build_resnet_fpn_backbone (its ResNeXt, not ours):
    the TorchScript export of its FPN reproduces detectron2's backbone."""
    cfg = tiny_cfg(DEPTH=50)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    model = randomize_norm_stats(build_model(cfg), seed=7).eval()
    assert type(model.backbone.bottom_up).__name__ == "ResNet"
    _save(model, tmp_path / "d2.pth")
    export_backbone(cfg, tmp_path / "d2.pth", "torchscript", tmp_path / "d2.ts", fpn=True)
    x = torch.randn(2, 3, 96, 64) * 50
    with torch.no_grad():
        got = dict(zip(["p2", "p3", "p4", "p5", "p6"], torch.jit.load(str(tmp_path / "d2.ts"))(x)))
        assert max_relative_error(got, model.backbone(x)) <= TOL


# ----------------------------------------------------------------------------- traced formats


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """norm -> (cfg, checkpoint, reference) of tiny ResNeXt-FPN detectors with random statistics:
    detectron2's default FrozenBN and eval-mode BatchNorm, the two norms folding handles.

    ``reference`` is detectron2's own ResNet-FPN (``build_resnet_fpn_backbone``, its
    ``BottleneckBlock(num_groups=...)``, not this project's code) with the checkpoint loaded
    strictly: what an export must reproduce, independent of the eager model the export checks
    itself against. Depth 50 at tiny widths: detectron2 builds no ResNet-26.
    """
    out = {}
    for norm in ("FrozenBN", "BN"):
        cfg = tiny_cfg(DEPTH=50, NUM_GROUPS=4, WIDTH_PER_GROUP=4, NORM=norm)
        model = randomize_norm_stats(build_model(cfg), seed=5).eval()
        path = tmp_path_factory.mktemp(norm) / "model.pth"
        _save(model, path)
        d2_cfg = cfg.clone()
        d2_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
        reference = build_model(d2_cfg).eval()
        assert type(reference.backbone.bottom_up).__name__ == "ResNet"  # detectron2's
        reference.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
        out[norm] = (cfg, path, reference)
    return out


def _run_traced(format: str, path, x: torch.Tensor) -> list[torch.Tensor]:
    if format == "torchscript":
        with torch.no_grad():
            return list(torch.jit.load(str(path))(x))
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()})]


@pytest.mark.parametrize("fold_bn", [False, True], ids=["bn", "folded"])
@pytest.mark.parametrize("format", ["torchscript", "onnx"])
@pytest.mark.parametrize("fpn, norm", [(True, "FrozenBN"), (False, "BN")], ids=["fpn", "bottom_up"])
def test_traced_matches_detectron2_on_two_sizes(tiny_models, tmp_path, format, fold_bn, fpn, norm):
    """The traced file, run by TorchScript / onnxruntime, gives detectron2's own ResNet(-FPN)
    outputs for the checkpoint's weights, at the traced size and at another batch and size."""
    cfg, ckpt, reference = tiny_models[norm]
    out = tmp_path / f"bb.{'onnx' if format == 'onnx' else 'ts'}"
    r = export_backbone(cfg, ckpt, format, out, fpn=fpn, fold_bn=fold_bn)
    names = list(r.metadata["outputs"])
    assert names == (["p2", "p3", "p4", "p5", "p6"] if fpn else list(STAGES))
    independent = reference.backbone if fpn else reference.backbone.bottom_up
    g = torch.Generator().manual_seed(6)
    # 64x64 is the traced size; 96x128 with batch 3 is not.
    for shape in [(1, 3, 64, 64), (3, 3, 96, 128)]:
        x = torch.randn(shape, generator=g) * 50
        with torch.no_grad():
            expected = independent(x)
        got = dict(zip(names, _run_traced(format, out, x)))
        assert got["p2" if fpn else "res2"].shape[-2:] == (shape[2] // 4, shape[3] // 4)
        assert max_relative_error(got, expected) <= TOL
    assert r.metadata["bn_folded"] is fold_bn
    if format == "torchscript":
        graph = str(torch.jit.load(str(out)).inlined_graph)
        assert ("batch_norm" in graph) is not fold_bn
    if format == "onnx":
        # Each output's own size names (res2 is H/4, res5 H/32), not the input's height/width.
        import onnx

        graph = onnx.load(str(out)).graph
        dims = {o.name: [d.dim_param for d in o.type.tensor_type.shape.dim] for o in graph.output}
        assert dims == {n: ["batch", "", f"{n}_height", f"{n}_width"] for n in names}
        assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == [
            "batch", "", "height", "width"
        ]  # fmt: skip


class _Off(nn.Module):
    """A traced module gone wrong: the right outputs, 1% off."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t * 1.01 for t in self.module(x))


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_traced_export_that_differs_is_refused(tiny_models, tmp_path, monkeypatch, format):
    """The check after writing is real: a trace whose outputs differ from the eager model's is
    refused with the error and the tolerance, and nothing is left in the folder."""
    cfg, ckpt, _ = tiny_models["FrozenBN"]
    if format == "torchscript":
        real = torch.jit.trace
        monkeypatch.setattr(torch.jit, "trace", lambda m, *a, **k: real(_Off(m), *a, **k))
    else:
        pytest.importorskip("onnxruntime")
        real = torch.onnx.export
        monkeypatch.setattr(torch.onnx, "export", lambda m, *a, **k: real(_Off(m), *a, **k))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    match = (
        r"export differs from the eager model by 0\.01.* tolerance 0\.0001\. Nothing was written"
    )
    with pytest.raises(RuntimeError, match=match):
        export_backbone(cfg, ckpt, format, out_dir / f"bb.{format}", fpn=True)
    _assert_nothing_written(out_dir, [])


@pytest.mark.slow
@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_traced_x50_fpn_folded(x50, tmp_path, format):
    """At full width, folded: the trace gives detectron2's own ResNeXt-FPN outputs."""
    cfg, _, ckpt = x50
    d2_cfg = cfg.clone()
    d2_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    reference = build_model(d2_cfg).eval()
    reference.load_state_dict(torch.load(ckpt, weights_only=True)["model"], strict=True)
    out = tmp_path / f"x50.{format}"
    export_backbone(cfg, ckpt, format, out, fpn=True, fold_bn=True)
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:
        x = torch.randn(shape) * 50
        with torch.no_grad():
            expected = reference.backbone(x)
        got = dict(zip(["p2", "p3", "p4", "p5", "p6"], _run_traced(format, out, x)))
        assert max_relative_error(got, expected) <= TOL


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A training checkpoint as detectron2's trainer writes it (model, optimizer, scheduler,
    iteration) of a tiny X-26-2x4d FPN detector, alone in its folder."""
    cfg = tiny_cfg()
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    (tmp_path / "train").mkdir()
    checkpointer = DetectionCheckpointer(
        model,
        str(tmp_path / "train"),
        optimizer=optimizer,
        scheduler=build_lr_scheduler(cfg, optimizer),
    )
    checkpointer.save("model_final", iteration=123)
    os.replace(tmp_path / "train" / "model_final.pth", tmp_path / "ck.pth")
    shutil.rmtree(tmp_path / "train")
    return cfg, tmp_path / "ck.pth"


def _assert_nothing_written(folder, before):
    assert _files(folder) == before  # no export, no sidecar, no temporary file


def test_checkpoint_without_backbone(tmp_path):
    torch.save(
        {"model": {"roi_heads.box_predictor.cls_score.weight": torch.zeros(2, 4)}},
        tmp_path / "heads.pth",
    )
    with pytest.raises(ValueError, match=r"cannot tell the layout of .*heads\.pth.*roi_heads\.box"):
        export_backbone(tiny_cfg(), tmp_path / "heads.pth", "detectron2", tmp_path / "o.pth")
    _assert_nothing_written(tmp_path, ["heads.pth"])


def test_config_with_other_cardinality(tiny_ckpt):
    cfg, ckpt = tiny_ckpt
    other = tiny_cfg(NUM_GROUPS=4, WIDTH_PER_GROUP=2)  # same C*d = 8, other groups
    with pytest.raises(
        ValueError,
        match=r"holds a X-26-2x4d ResNet .* but the model is X-26-4x2d: 'res2\.0\.conv2\.weight' "
        r"\(checkpoint 'backbone\.bottom_up\.res2\.0\.conv2\.weight'\) has shape \(8, 4, 3, 3\) in "
        r"the checkpoint but \(8, 2, 3, 3\)",
    ):
        export_backbone(other, ckpt, "torchscript", ckpt.parent / "o.ts")
    _assert_nothing_written(ckpt.parent, ["ck.pth"])


def test_config_with_other_depth(tiny_ckpt):
    cfg, ckpt = tiny_ckpt
    with pytest.raises(ValueError, match=r"X-26-2x4d ResNet .* but the model is X-50-2x4d"):
        export_backbone(tiny_cfg(DEPTH=50), ckpt, "detectron2", ckpt.parent / "o.pth")
    _assert_nothing_written(ckpt.parent, ["ck.pth"])


def test_config_with_other_fpn_width(tiny_ckpt):
    cfg, ckpt = tiny_ckpt
    other = cfg.clone()
    other.MODEL.FPN.OUT_CHANNELS = 8
    match = (
        r"'fpn_lateral2\.weight' \(checkpoint 'backbone\.fpn_lateral2\.weight'\) has shape "
        r"\(16, 16, 1, 1\) in the checkpoint but \(8, 16, 1, 1\)"
    )
    with pytest.raises(ValueError, match=match):
        export_backbone(other, ckpt, "onnx", ckpt.parent / "o.onnx", fpn=True)
    _assert_nothing_written(ckpt.parent, ["ck.pth"])


def test_fpn_asked_of_a_checkpoint_without_one(tmp_path):
    cfg = tiny_cfg()
    backbone = build_model(cfg).backbone.bottom_up
    torch.save(backbone.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare backbone\) lacks .* has no FPN weights"):
        export_backbone(cfg, tmp_path / "bare.pth", "detectron2", tmp_path / "o.pth", fpn=True)
    _assert_nothing_written(tmp_path, ["bare.pth"])
    # Without fpn it is a complete backbone.
    r = export_backbone(cfg, tmp_path / "bare.pth", "detectron2", tmp_path / "o.pth")
    assert r.metadata["source"]["layout"] == "bare backbone"
    assert not any("FPN" in item or "heads" in item for item in r.metadata["not_included"])


@pytest.mark.parametrize(
    "format, kwargs, match",
    [
        ("torchvision", {"fpn": True}, "torchvision's ResNet has no FPN"),
        ("timm", {"fold_bn": True}, "fold_bn .* applies to the traced formats"),
        ("onnx", {"container": "safetensors"}, "container .* applies to the state-dict formats"),
        ("torchvision", {}, r"MODEL\.RESNETS\.STEM_OUT_CHANNELS=64; this model has 8"),
        ("keras", {}, "format must be one of torchvision, timm, detectron2, torchscript, onnx"),
        ("detectron2", {"container": "npz"}, "container must be one of torch, safetensors"),
    ],
)
def test_bad_options(tiny_ckpt, format, kwargs, match):
    cfg, ckpt = tiny_ckpt
    with pytest.raises(ValueError, match=match):
        export_backbone(cfg, ckpt, format, ckpt.parent / "o.pth", **kwargs)
    _assert_nothing_written(ckpt.parent, ["ck.pth"])


@pytest.mark.parametrize(
    "out, opts, match",
    [
        ("ck.pth", [], r"out '.*ck\.pth' is the input '.*ck\.pth'"),
        (".", [], r"is a directory"),
        ("o.pth", ["MODEL.RESNETS.NUM_GROUPS"], r"KEY VALUE pairs"),
        ("o.pth", ["MODEL.RESNETS.NUM_GROPS", "4"], r"NUM_GROPS"),
    ],
)
def test_bad_paths_and_overrides(tiny_ckpt, out, opts, match):
    cfg, ckpt = tiny_ckpt
    with pytest.raises(ValueError, match=match):
        export_backbone(cfg, ckpt, "detectron2", ckpt.parent / out, opts=opts)
    _assert_nothing_written(ckpt.parent, ["ck.pth"])


@pytest.mark.parametrize(
    "weights, config, out, match",
    [
        ("ck.pth", "c.yaml", "c.yaml", r"out '.*c\.yaml' is the input '.*c\.yaml'"),
        ("ck.pth", "c.yaml", "base.yaml", r"out '.*base\.yaml' is the input '.*base\.yaml'"),
        ("v.pt.json", "c.yaml", "v.pt", r"out's sidecar '.*v\.pt\.json' is the input"),
        ("ck.pth", "k.pt.json", "k.pt", r"out's sidecar '.*k\.pt\.json' is the input"),
        ("ck.pth", "c.yaml", "ck.pth.json", r"out '.*ck\.pth\.json' is the input"),
    ],
)
def test_an_export_never_lands_on_what_it_reads(tiny_ckpt, weights, config, out, match):
    """Neither ``out`` nor its sidecar ``out.json`` may be the checkpoint, the checkpoint's
    sidecar, the config or a file of its _BASE_ chain: refused before anything is written."""
    cfg, ckpt = tiny_ckpt
    folder = ckpt.parent
    os.replace(ckpt, folder / weights)
    (folder / "ck.pth.json").write_text("{}")  # a sidecar read_weights would check
    (folder / "base.yaml").write_text(cfg.dump())
    (folder / config).write_text("_BASE_: base.yaml\n# the user's own notes\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match=match):
        export_backbone(folder / config, folder / weights, "detectron2", folder / out)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_failed_write_keeps_the_old_export(tiny_ckpt, monkeypatch):
    cfg, ckpt = tiny_ckpt
    out = ckpt.parent / "o.pth"
    export_backbone(cfg, ckpt, "detectron2", out)
    before = (out.read_bytes(), (ckpt.parent / "o.pth.json").read_bytes())

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_backbone(cfg, ckpt, "detectron2", out)
    assert _files(ckpt.parent) == ["ck.pth", "o.pth", "o.pth.json"]
    assert (out.read_bytes(), (ckpt.parent / "o.pth.json").read_bytes()) == before


# ----------------------------------------------------------------------------- sidecar and tool


def test_sidecar_fields(tiny_ckpt):
    cfg, ckpt = tiny_ckpt
    out = ckpt.parent / "bb.onnx"
    result = export_backbone(cfg, ckpt, "onnx", out, fpn=True, fold_bn=True)
    meta = json.loads((ckpt.parent / "bb.onnx.json").read_text())
    # The sidecar describes the file written (its sha256), so the project's reader takes it; a
    # sidecar left beside another file is ignored.
    from resnext_det.weights.io import read_sidecar

    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert read_sidecar(out) == meta and result.path == out
    other = ckpt.parent / "other.onnx"
    other.write_bytes(out.read_bytes() + b"\0")
    (ckpt.parent / "other.onnx.json").write_text(json.dumps(meta))
    assert read_sidecar(other) == {}
    arch = meta["architecture"]
    assert (arch["depth"], arch["cardinality"], arch["width_per_group"]) == (26, 2, 4)
    assert arch["block_form"] == "grouped" and arch["source_block_form"] == "grouped"
    assert arch["fpn"] is True and arch["fpn_out_channels"] == 16
    assert meta["input"]["format"] == cfg.INPUT.FORMAT == "BGR"
    assert meta["input"]["pixel_mean"] == list(cfg.MODEL.PIXEL_MEAN)
    assert meta["input"]["pixel_std"] == list(cfg.MODEL.PIXEL_STD)
    assert meta["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["source"]["checkpoint"] == str(ckpt.resolve())
    assert meta["source"]["iteration"] == 123
    assert meta["resnext_det_version"] == resnext_det.__version__
    assert meta["format"] == "onnx" and meta["bn_folded"] is True
    assert meta["outputs"]["p6"] == {"channels": 16, "stride": 64}
    assert any("heads" in item for item in meta["not_included"])
    assert not any(item.startswith("FPN") for item in meta["not_included"])


def test_tool(tiny_ckpt):
    cfg, ckpt = tiny_ckpt
    config = ckpt.parent / "cfg.yaml"
    config.write_text(cfg.dump())
    tool = [sys.executable, str(REPO / "tools" / "export_backbone.py")]
    args = ["--config-file", str(config), "--weights", str(ckpt), "--format", "detectron2"]
    run = subprocess.run(
        [*tool, *args, "--out", str(ckpt.parent / "bb.pth"), "--fpn"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "not included:" in run.stdout and "detector heads" in run.stdout
    meta = json.loads((ckpt.parent / "bb.pth.json").read_text())
    assert meta["source"]["config_file"] == str(config.resolve())

    # An override that contradicts the checkpoint: a clear one-line error, no traceback, no file.
    bad = subprocess.run(
        [
            *tool,
            *args,
            "--out",
            str(ckpt.parent / "x.pth"),
            "MODEL.RESNETS.NUM_GROUPS",
            "8",
            "MODEL.RESNETS.WIDTH_PER_GROUP",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "res2.0.conv2.weight') has shape (8, 4, 3, 3)" in bad.stderr
    assert not (ckpt.parent / "x.pth").exists()


def test_the_class_names_of_the_trained_weights_travel_to_the_export(tmp_path):
    # Issue 27: the trainer's record of the training set's classes reaches the sidecar (and the
    # safetensors header), so that whatever loads the export can say "raccoon".
    from resnext_det.weights.checkpointer import ResNeXtCheckpointer
    from resnext_det.weights.reader import recorded_classes

    cfg = tiny_cfg()
    model = build_model(cfg)
    saver = ResNeXtCheckpointer(model, save_dir=str(tmp_path))
    saver.classes = {"thing_classes": ["raccoon"], "thing_dataset_ids": [1]}
    saver.save("model_final")
    out = tmp_path / "bb.safetensors"
    export_backbone(cfg, tmp_path / "model_final.pth", "detectron2", out)
    sidecar = json.loads((tmp_path / "bb.safetensors.json").read_text())
    assert sidecar["thing_classes"] == ["raccoon"] and sidecar["thing_dataset_ids"] == [1]
    assert recorded_classes(out) == {"thing_classes": ["raccoon"], "thing_dataset_ids": [1]}
    assert stat_mode(out) == stat_mode(tmp_path / "bb.safetensors.json")  # both 0644 (umask)


def stat_mode(path) -> int:
    import stat

    return stat.S_IMODE(os.stat(path).st_mode)
