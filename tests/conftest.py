"""Shared fixtures: tiny configs for wiring tests, real shapes where equivalence is the point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import resnext_det

REPO = Path(__file__).resolve().parents[1]
RACCOON = Path(os.environ.get("RESNEXT_DET_SHARED", REPO.parent / "shared")) / "data" / "raccoon"


def randomize_norm_stats(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every norm non-trivial statistics and affine terms, so that a test of equal outputs
    cannot pass by norms that are the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if all(hasattr(m, k) for k in ("running_mean", "running_var", "weight", "bias")):
            if m.running_mean is None:
                continue
            with torch.no_grad():
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def tiny_cfg(**resnets):
    """A detectron2 config of a ResNeXt-FPN Faster R-CNN small enough for wiring tests on a CPU."""
    cfg = resnext_det.load_config(REPO / "configs" / "Base-RCNN-FPN.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnext_fpn_backbone"
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP = 26, 2, 4
    r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS = 8, 16
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    for k, v in resnets.items():
        setattr(r, k, v)
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 256
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 96
    return cfg


# The tiny ResNeXt (X-26-2x4d, stem 8, res2 16) of the weights-file tests.
TINY_SPEC = resnext_det.ResNeXtSpec(26, 2, 4, stem_out_channels=8, res2_out_channels=16)


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    """A tiny torchvision-layout state_dict of ``TINY_SPEC``'s network (seeded)."""
    from resnext_det.weights import detectron2_to_torchvision

    torch.manual_seed(0)
    return detectron2_to_torchvision(resnext_det.make_resnext(TINY_SPEC).state_dict())


@pytest.fixture
def tiny_detector_cfg():
    return tiny_cfg()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# Give every test, and every module, the thread count it started with: tools run in-process set
# their own (--threads), and what a model computes can depend on it (which kernel a convolution
# gets). Per module too: a module-scoped fixture that runs a command in-process (test_sweep's)
# would otherwise hand its thread count to every later module.
_restore_torch_threads = pytest.fixture(autouse=True)(_keep_torch_threads)
_restore_torch_threads_per_module = pytest.fixture(scope="module", autouse=True)(
    _keep_torch_threads
)


def _undo_registrations():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# Undo the data sets a test registers: detectron2's catalogs are process-global, and a name
# registered again with other files is (rightly) an error. Per module too, for the module-scoped
# fixtures that register (they run before a test's own snapshot).
_isolated_dataset_catalog = pytest.fixture(autouse=True)(_undo_registrations)
_isolated_dataset_catalog_per_module = pytest.fixture(autouse=True, scope="module")(
    _undo_registrations
)


def flat(node, prefix=""):
    """A nested config as {"A.B.C": value}, to compare configs key by key."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
