"""RetinaNet, Mask R-CNN and Cascade Mask R-CNN on the ResNeXt backbone.

Each config is checked against detectron2's own model-zoo yaml (the same keys but the backbone
builder, and for RetinaNet X-50 the weights and their conventions), and the model it builds
against the one detectron2's built-in ResNet builders make from the zoo file (the same state-dict
keys and shapes, so the zoo's checkpoints load). Each head then takes a CPU training step.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, flat
from detectron2 import model_zoo
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model

import resnext_det
from resnext_det.backbone import build_resnext_retinanet_fpn_backbone
from resnext_det.config import load_config

CONFIGS = REPO / "configs"
X50 = {"MODEL.RESNETS.NUM_GROUPS": 32, "MODEL.RESNETS.WIDTH_PER_GROUP": 4}
X101 = {
    "MODEL.RESNETS.NUM_GROUPS": 32,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 8,
    "MODEL.RESNETS.DEPTH": 101,
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "MODEL.PIXEL_STD": [57.375, 57.120, 58.395],
    "MODEL.WEIGHTS": "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl",
}
TORCHVISION_CONVENTIONS = {
    "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "INPUT.FORMAT",
    "MODEL.BACKBONE.FREEZE_AT",
    "MODEL.WEIGHTS",
}
# ours -> (detectron2's zoo file, changes that make it the same model, keys allowed to differ)
HEADS = {
    "retinanet_X_50_32x4d_FPN_1x": (
        "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
        {**X50, "MODEL.RESNETS.STRIDE_IN_1X1": False},
        TORCHVISION_CONVENTIONS,
    ),
    "mask_rcnn_X_101_32x8d_FPN_3x": (
        "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
        {},
        set(),
    ),
    "cascade_mask_rcnn_X_101_32x8d_FPN_1x": (
        "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml",
        X101,
        set(),
    ),
}
D2_BUILDERS = {
    "build_resnext_fpn_backbone": "build_resnet_fpn_backbone",
    "build_resnext_retinanet_fpn_backbone": "build_retinanet_resnet_fpn_backbone",
}


def same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def zoo_cfg(name: str, changes: dict):
    cfg = load_config(model_zoo.get_config_file(name))  # detectron2's own file: trusted
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_config_is_detectron2s_zoo_config(name):
    zoo_name, changes, may_differ = HEADS[name]
    ours = flat(load_config(CONFIGS / f"{name}.yaml"))
    zoo = flat(zoo_cfg(zoo_name, changes))
    assert D2_BUILDERS[ours["MODEL.BACKBONE.NAME"]] == zoo["MODEL.BACKBONE.NAME"]
    differ = {
        k: (ours[k], zoo[k])
        for k in ours
        if k != "MODEL.BACKBONE.NAME" and k not in may_differ and not same(ours[k], zoo[k])
    }
    assert not differ


def test_retinanet_config_loads_without_python_yaml_tags():
    """detectron2's Base-RetinaNet.yaml needs an unsafe tag; ours is plain yaml (the safe loader
    refuses tags outside the installed zoo, so this load would raise otherwise)."""
    yaml.safe_load((CONFIGS / "Base-RetinaNet.yaml").read_text())  # raises on any Python tag
    cfg = load_config(CONFIGS / "retinanet_X_50_32x4d_FPN_1x.yaml")
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    assert [len(s) for s in sizes] == [3] * 5
    assert sizes[1][2] == pytest.approx(64 * 2 ** (2 / 3))


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_model_has_detectron2s_state_dict(name):
    """The whole detector, not only the backbone: every key and shape of detectron2's built-in."""
    zoo_name, changes, _ = HEADS[name]
    ours = load_config(CONFIGS / f"{name}.yaml", ["MODEL.DEVICE", "meta"])
    theirs = zoo_cfg(zoo_name, {**changes, "MODEL.DEVICE": "meta"})
    with torch.device("meta"):
        a = {k: tuple(v.shape) for k, v in build_model(ours).state_dict().items()}
        b = {k: tuple(v.shape) for k, v in build_model(theirs).state_dict().items()}
    assert a == b
    assert any(k.startswith("roi_heads.mask_head") for k in a) == ("mask" in name)
    assert any(k.startswith("roi_heads.box_predictor.2") for k in a) == ("cascade" in name)


def test_retinanet_backbone_levels_match_detectron2():
    cfg = load_config(
        CONFIGS / "retinanet_X_50_32x4d_FPN_1x.yaml",
        ["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.NUM_GROUPS", 2, "MODEL.RESNETS.WIDTH_PER_GROUP"]
        + [4, "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16]
        + ["MODEL.FPN.OUT_CHANNELS", 16],
    )
    ours = build_resnext_retinanet_fpn_backbone(cfg, ShapeSpec(channels=3))
    d2 = cfg.clone()
    d2.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
    theirs = build_backbone(d2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 96, 128)
    out_a, out_b = ours.eval()(x), theirs.eval()(x)
    assert list(out_a) == ["p3", "p4", "p5", "p6", "p7"] == list(out_b)
    assert {k: v.stride for k, v in ours.output_shape().items()} == {
        "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128,
    }  # fmt: skip
    for k in out_a:
        torch.testing.assert_close(out_a[k], out_b[k])


def test_retinanet_backbone_without_res5_is_a_clear_error():
    cfg = load_config(
        CONFIGS / "retinanet_X_50_32x4d_FPN_1x.yaml",
        ["MODEL.RESNETS.OUT_FEATURES", ["res3", "res4"], "MODEL.FPN.IN_FEATURES", ["res3", "res4"]],
    )
    with pytest.raises(ValueError, match="OUT_FEATURES must include 'res5'"):
        build_resnext_retinanet_fpn_backbone(cfg, ShapeSpec(channels=3))


TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.BACKBONE.FREEZE_AT", 0,
    "MODEL.RESNETS.DEPTH", 26, "MODEL.RESNETS.NUM_GROUPS", 2, "MODEL.RESNETS.WIDTH_PER_GROUP", 4,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", 16,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 128, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 32,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16, "MODEL.ROI_HEADS.NUM_CLASSES", 4,
    "MODEL.RETINANET.NUM_CLASSES", 4, "MODEL.ROI_BOX_HEAD.FC_DIM", 16,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 8, "MODEL.RETINANET.NUM_CONVS", 1,
    "INPUT.MASK_FORMAT", "bitmask",
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64,
    "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.001, "SOLVER.WARMUP_ITERS", 0,
    "DATALOADER.NUM_WORKERS", 0,
]  # fmt: skip


@pytest.fixture(scope="module")
def masked_batch(tmp_path_factory):
    """Two generated images with boxes and (RLE) masks, mapped as detectron2's train loader does."""
    from detectron2.data.datasets import load_coco_json

    from resnext_det.data import make_synthetic_coco

    ds = make_synthetic_coco(tmp_path_factory.mktemp("heads"), num_train=2, num_val=1, seed=0)
    return load_coco_json(str(ds.train_json), str(ds.train_image_root), "heads_train")


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_takes_a_cpu_training_step(name, masked_batch):
    from detectron2.data import DatasetMapper
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    cfg = load_config(CONFIGS / f"{name}.yaml", TINY)
    model = build_model(cfg).train()
    mapper = DatasetMapper(cfg, is_train=True)
    batch = [mapper(dict(r)) for r in masked_batch]
    if cfg.MODEL.MASK_ON:
        assert all(b["instances"].has("gt_masks") for b in batch)
    optimizer = build_optimizer(cfg, model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with EventStorage():
        losses = model(batch)
    expected = {
        "retinanet": {"loss_cls", "loss_box_reg"},
        "mask": {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"},
    }
    key = "retinanet" if "retinanet" in name else "mask"
    names = {k.split("_stage")[0] for k in losses}
    assert names == expected[key]
    if "cascade" in name:
        assert {f"loss_box_reg_stage{i}" for i in range(3)} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.bottom_up") for k in changed)
    head = "head." if "retinanet" in name else "roi_heads."
    assert any(k.startswith(head) for k in changed)


def test_package_registers_the_retinanet_builder():
    from detectron2.modeling import BACKBONE_REGISTRY

    assert BACKBONE_REGISTRY.get("build_resnext_retinanet_fpn_backbone") is (
        resnext_det.build_resnext_retinanet_fpn_backbone
    )


def test_mask_rcnn_is_evaluated_for_boxes_and_masks(tmp_path, masked_batch):
    """The project's trainer evaluates a Mask R-CNN config with detectron2's COCOEvaluator
    (pycocotools' reference COCOeval) for both tasks."""
    from detectron2.data.datasets import register_coco_instances

    from resnext_det.training import Trainer

    image = Path(masked_batch[0]["file_name"])
    register_coco_instances(
        "heads_eval", {}, str(image.parents[1] / "annotations" / "train.json"), str(image.parent)
    )
    cfg = load_config(
        CONFIGS / "mask_rcnn_X_101_32x8d_FPN_3x.yaml",
        [*TINY, "DATASETS.TEST", ("heads_eval",), "OUTPUT_DIR", str(tmp_path)],
    )
    results = Trainer.test(cfg, build_model(cfg).eval())  # one data set: its results directly
    assert {"bbox", "segm"} <= set(results)
    assert "AP" in results["segm"]
