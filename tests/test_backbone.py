"""The backbone: three equivalent block forms, equality with detectron2's own ResNet, shapes,
freezing and config errors."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_norm_stats, tiny_cfg
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

import resnext_det
from resnext_det import ResNeXtSpec, make_resnext, to_grouped_state_dict

X50 = ResNeXtSpec(depth=50, cardinality=32, width_per_group=4)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the output's scale."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def detectron2_cfg(depth: int, groups: int, width: int, backbone: str):
    cfg = resnext_det.load_config(
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml")
    )
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NUM_GROUPS = groups
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = width
    cfg.MODEL.BACKBONE.NAME = backbone
    return cfg


def test_builders_are_registered():
    assert "build_resnext_backbone" in BACKBONE_REGISTRY
    assert "build_resnext_fpn_backbone" in BACKBONE_REGISTRY


@pytest.mark.parametrize("form", ["aggregated", "concat"])
def test_block_forms_equal_grouped_at_real_width(form):
    """Forms (a) and (b) compute what form (c) computes, from the same weights: forward outputs
    and the gradient with respect to the input, ResNeXt-50 32x4d at its real width."""
    grouped = randomize_norm_stats(make_resnext(X50)).eval()
    other = make_resnext(X50.replace(block_form=form)).eval()
    result = other.load_state_dict(grouped.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    x = torch.randn(2, 3, 64, 96)
    outs = []
    for model in (grouped, other):
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        weights = torch.Generator().manual_seed(1)
        loss = sum((v * torch.randn(v.shape, generator=weights)).sum() for v in out.values())
        loss.backward()
        outs.append((out, xi.grad))
    (ref, ref_grad), (got, got_grad) = outs
    for name in ref:
        assert rel_err(got[name], ref[name]) <= 1e-4, name
    assert rel_err(got_grad, ref_grad) <= 1e-4


@pytest.mark.parametrize("form", ["aggregated", "concat"])
def test_state_dict_is_form_independent(form):
    """Any form's state_dict turns back into exactly the grouped layout (BN counters included)."""
    spec = ResNeXtSpec(
        depth=26,
        cardinality=4,
        width_per_group=2,
        norm="BN",
        stem_out_channels=8,
        res2_out_channels=16,
    )
    grouped = randomize_norm_stats(make_resnext(spec))
    other = make_resnext(spec.replace(block_form=form))
    other.load_state_dict(grouped.state_dict(), strict=True)
    back = to_grouped_state_dict(other.state_dict())
    expected = grouped.state_dict()
    assert back.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(back[key], value), key


def test_path_form_rejects_checkpoint_of_other_cardinality():
    spec = ResNeXtSpec(
        depth=26, cardinality=4, width_per_group=2, stem_out_channels=8, res2_out_channels=16
    )
    three = make_resnext(spec.replace(cardinality=3, width_per_group=2))
    aggregated = make_resnext(spec.replace(block_form="aggregated"))
    with pytest.raises(ValueError, match=r"cannot split 'res2\.0\.conv1\.weight' of shape"):
        aggregated.load_state_dict(three.state_dict())


@pytest.mark.parametrize("depth,groups,width", [(50, 32, 4), (101, 32, 8)])
def test_grouped_equals_detectron2_resnet(depth, groups, width):
    """Same weights in, same numbers out: the project's X-50/X-101 and detectron2's built-in
    build_resnet_backbone with the same NUM_GROUPS/WIDTH_PER_GROUP, bottom-up and FPN."""
    shape = ShapeSpec(channels=3)
    ours_cfg = detectron2_cfg(depth, groups, width, "build_resnext_fpn_backbone")
    theirs = randomize_norm_stats(build_resnet_fpn_backbone(ours_cfg, shape)).eval()
    ours = build_backbone(ours_cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        bottom_theirs, bottom_ours = theirs.bottom_up(x), ours.bottom_up(x)
        fpn_theirs, fpn_ours = theirs(x), ours(x)
    assert bottom_ours.keys() == bottom_theirs.keys() == {"res2", "res3", "res4", "res5"}
    for name in bottom_theirs:
        assert rel_err(bottom_ours[name], bottom_theirs[name]) <= 1e-5, name
    assert fpn_ours.keys() == fpn_theirs.keys() == {"p2", "p3", "p4", "p5", "p6"}
    for name in fpn_theirs:
        assert rel_err(fpn_ours[name], fpn_theirs[name]) <= 1e-5, name


def test_parameter_names_match_detectron2_detector():
    """A detectron2 model-zoo ResNeXt config works by changing only MODEL.BACKBONE.NAME, and the
    detector's state_dict keys and shapes are exactly detectron2's."""
    cfg = detectron2_cfg(50, 32, 4, "build_resnet_fpn_backbone")
    cfg.MODEL.DEVICE = "cpu"
    theirs = build_model(cfg).state_dict()
    cfg.MODEL.BACKBONE.NAME = "build_resnext_fpn_backbone"
    ours = build_model(cfg).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert "backbone.bottom_up.res2.0.conv2.weight" in ours
    assert "backbone.fpn_lateral2.weight" in ours and "backbone.fpn_output5.weight" in ours


def test_resnet_and_resnext_differ_only_in_groups():
    """C=1, d=64 through the same builder is detectron2's ResNet-50, parameter for parameter."""
    cfg = detectron2_cfg(50, 1, 64, "build_resnext_backbone")
    ours = build_backbone(cfg)
    theirs = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert ours.spec.name == "R-50"
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_shapes_and_strides_for_odd_input():
    net = make_resnext(
        ResNeXtSpec(
            depth=26, cardinality=4, width_per_group=4, stem_out_channels=16, res2_out_channels=32
        )
    )
    out = net(torch.randn(1, 3, 517, 611))
    shapes = net.output_shape()
    assert {k: s.stride for k, s in shapes.items()} == {
        "res2": 4,
        "res3": 8,
        "res4": 16,
        "res5": 32,
    }
    size = (517, 611)
    for name, stride in (("res2", 4), ("res3", 8), ("res4", 16), ("res5", 32)):
        # every stride-2 conv/pool with padding rounds up
        expected = tuple(-(-s // stride) for s in size)
        assert tuple(out[name].shape[-2:]) == expected, name
        assert out[name].shape[1] == shapes[name].channels


def test_fpn_shapes_on_padded_input():
    cfg = tiny_cfg()
    fpn = build_backbone(cfg)
    assert fpn.size_divisibility == 32
    h, w = 517, 611
    div = fpn.size_divisibility
    ph, pw = -(-h // div) * div, -(-w // div) * div  # as detectron2's ImageList pads
    out = fpn(torch.randn(1, 3, ph, pw))
    shapes = fpn.output_shape()
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for name, stride in zip(out, (4, 8, 16, 32, 64)):
        assert shapes[name].stride == stride
        assert out[name].shape[1] == cfg.MODEL.FPN.OUT_CHANNELS == shapes[name].channels
        # exact up to p5; p6 (a stride-2 max-pool of p5) rounds up as in detectron2
        assert tuple(out[name].shape[-2:]) == (-(-ph // stride), -(-pw // stride))
        if stride <= div:
            assert ph % stride == 0 and pw % stride == 0


@pytest.mark.parametrize("form", ["grouped", "aggregated", "concat"])
def test_freeze_at_2_freezes_exactly_stem_and_res2(form):
    cfg = tiny_cfg(NORM="BN")
    cfg.MODEL.RESNEXT.BLOCK_FORM = form
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    net = build_backbone(cfg).bottom_up
    net.train()
    for name, param in net.named_parameters():
        frozen = name.startswith(("stem.", "res2."))
        assert param.requires_grad != frozen, name
    for name, module in net.named_modules():
        if name.startswith(("stem", "res2")) and hasattr(module, "running_mean"):
            assert isinstance(module, FrozenBatchNorm2d), name
        elif name.startswith(("res3", "res4", "res5")) and hasattr(module, "running_mean"):
            assert isinstance(module, torch.nn.BatchNorm2d) and module.training, name


def test_width_zero_uses_the_template():
    cfg = tiny_cfg(NUM_GROUPS=8, WIDTH_PER_GROUP=0, STEM_OUT_CHANNELS=64, RES2_OUT_CHANNELS=256)
    assert build_backbone(cfg).bottom_up.spec.width_per_group == 14


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("DEPTH", 34, r"MODEL\.RESNETS\.DEPTH must be one of 26, 50, 101, 152, 200; got 34"),
        ("NUM_GROUPS", 0, r"MODEL\.RESNETS\.NUM_GROUPS must be a positive integer; got 0"),
        ("WIDTH_PER_GROUP", -4, r"MODEL\.RESNETS\.WIDTH_PER_GROUP must be a positive integer"),
        ("NORM", "LN", r"MODEL\.RESNETS\.NORM must be one of .*'GN'.*; got 'LN'"),
        ("RES5_DILATION", 3, r"MODEL\.RESNETS\.RES5_DILATION must be 1 or 2; got 3"),
        ("OUT_FEATURES", ["res6"], r"MODEL\.RESNETS\.OUT_FEATURES must be a non-empty subset"),
    ],
)
def test_config_errors_name_the_key(key, value, match):
    cfg = tiny_cfg(**{key: value})
    with pytest.raises(ValueError, match=match):
        build_backbone(cfg)


def test_block_form_and_freeze_at_errors():
    cfg = tiny_cfg()
    cfg.MODEL.RESNEXT.BLOCK_FORM = "split"
    with pytest.raises(
        ValueError,
        match=r"MODEL\.RESNEXT\.BLOCK_FORM must be one of grouped, "
        r"aggregated, concat; got 'split'",
    ):
        build_backbone(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 6
    with pytest.raises(
        ValueError,
        match=r"MODEL\.BACKBONE\.FREEZE_AT must be an integer in "
        r"0\.\.5.*got 6",
    ):
        build_backbone(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3"]
    with pytest.raises(ValueError, match=r"MODEL\.FPN\.IN_FEATURES .* asks for \['res4', 'res5'\]"):
        build_backbone(cfg)


def test_c4_style_backbone_stops_at_res4():
    cfg = tiny_cfg(OUT_FEATURES=["res4"])
    cfg.MODEL.BACKBONE.NAME = "build_resnext_backbone"
    net = build_backbone(cfg)
    assert not hasattr(net, "res5")
    assert list(net(torch.randn(1, 3, 64, 64))) == ["res4"]


def test_add_resnext_config_is_idempotent_and_keeps_detectron2_defaults():
    base = get_cfg()
    cfg = resnext_det.add_resnext_config(get_cfg())
    resnext_det.add_resnext_config(cfg)
    assert cfg.MODEL.RESNEXT.BLOCK_FORM == "grouped"
    for key in ("RESNETS", "BACKBONE", "FPN"):
        assert cfg.MODEL[key] == base.MODEL[key]


def test_dc5_equals_detectron2_resnet():
    """RES5_DILATION 2 (the DC5 models): res5 keeps res4's resolution, same numbers as
    detectron2's own build_resnet_backbone from the same weights."""
    cfg = detectron2_cfg(50, 4, 8, "build_resnext_backbone")
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4", "res5"]
    theirs = randomize_norm_stats(build_resnet_backbone(cfg, ShapeSpec(channels=3))).eval()
    ours = build_backbone(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a["res5"].shape[-2:] == a["res4"].shape[-2:] == (4, 6)
    assert ours.output_shape()["res5"].stride == 16
    for name in b:
        assert rel_err(a[name], b[name]) <= 1e-5, name


def test_spec_template_and_replace_resolve_the_width_without_mutation():
    spec = ResNeXtSpec.template(depth=50, cardinality=8)
    assert spec.width_per_group == 14  # the paper's Table 2
    # A plain replace keeps d (the caller's choice); width 0 re-derives the template's.
    assert spec.replace(cardinality=2).width_per_group == 14
    assert spec.replace(cardinality=2, width_per_group=0).width_per_group == 40
    assert (
        spec.replace(cardinality=32, width_per_group=0) == resnext_det.VARIANTS["X-50-32x4d"].spec
    )
    with pytest.raises(ValueError, match="MODEL.RESNETS.WIDTH_PER_GROUP.*ResNeXtSpec.template"):
        ResNeXtSpec(depth=50, cardinality=8, width_per_group=0)


def test_variants_table_matches_torchvision():
    """Each named variant with a torchvision name builds the network torchvision builds."""
    import torchvision

    from resnext_det.complexity import backbone_complexity, count_complexity

    for name, variant in resnext_det.VARIANTS.items():
        assert variant.name == name
        if variant.torchvision and variant.spec.depth == 50:
            theirs = getattr(torchvision.models, variant.torchvision)()
            assert (
                backbone_complexity(variant.spec, (32, 32)).params
                == count_complexity(theirs, (32, 32)).params
            ), name


def test_block_form_names_match_the_builders():
    from resnext_det.spec import BLOCK_FORM_NAMES

    assert tuple(resnext_det.BLOCK_FORMS) == BLOCK_FORM_NAMES


@pytest.mark.parametrize("form", ["aggregated", "concat"])
def test_gn_with_path_forms_is_refused_naming_both_keys(form):
    """GN over each path's d channels is not GroupNorm(32, C*d): refuse instead of computing
    something else (issue 15, item 9)."""
    with pytest.raises(ValueError, match=r"MODEL.RESNETS.NORM 'GN'.*MODEL.RESNEXT.BLOCK_FORM"):
        ResNeXtSpec(depth=50, cardinality=2, width_per_group=32, norm="GN", block_form=form)
    # The grouped form with GN builds, and equals detectron2's GN ResNet.
    cfg = detectron2_cfg(50, 2, 32, "build_resnext_backbone")
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    theirs = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    ours = build_backbone(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours(x)["res5"], theirs(x)["res5"]) <= 1e-5


@pytest.mark.parametrize(
    "cardinality, width, what",
    [(8, 14, r"res2's bottleneck \(C\*d\) is 112"), (32, 4, None)],  # X-50 8x14d; 32x4d = 128
)
def test_gn_widths_must_divide_by_32(cardinality, width, what):
    if what is None:
        ResNeXtSpec(depth=50, cardinality=cardinality, width_per_group=width, norm="GN")
        return
    with pytest.raises(ValueError, match=rf"MODEL.RESNETS.NORM 'GN'.*{what}.*X-50-8x14d"):
        ResNeXtSpec(depth=50, cardinality=cardinality, width_per_group=width, norm="GN")


def test_fpn_out_channels_must_be_positive():
    cfg = tiny_cfg()
    cfg.MODEL.FPN.OUT_CHANNELS = 0
    with pytest.raises(
        ValueError, match="MODEL.FPN.OUT_CHANNELS must be a positive integer; got 0"
    ):
        build_backbone(cfg)


def test_input_format_is_checked_when_the_config_is_made():
    from resnext_det.errors import ConfigError

    with pytest.raises(ConfigError, match="INPUT.FORMAT must be one of BGR, RGB.*'XYZ'"):
        resnext_det.load_config(None, ["INPUT.FORMAT", "XYZ"])
