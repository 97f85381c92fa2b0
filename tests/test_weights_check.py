"""No score from unloaded heads (issue 15, item 2): evaluation refuses partial weights.

The comparison's side is in tests/test_compare.py (test_models_mode_runs_and_partial_weights);
this covers ``tools/train_net.py --eval-only`` (``resnext_det.training.evaluate``) and the check
itself.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_cfg
from detectron2.modeling import build_model

from resnext_det.commands.train import argument_parser
from resnext_det.training import evaluate
from resnext_det.weights.complete import (
    PartialWeightsError,
    check_complete_weights,
    key_groups,
)


def _cfg(tmp_path, weights, num_classes=2):
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATASETS.TEST = ()
    cfg.MODEL.RESNEXT.OPTIMIZE_FOR_INFERENCE = False
    return cfg


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    model = build_model(_cfg(tmp_path, ""))
    sd = model.state_dict()
    full = tmp_path / "full.pth"
    torch.save({"model": sd}, full)
    backbone = tmp_path / "backbone_only.pth"
    torch.save({"model": {k: v for k, v in sd.items() if k.startswith("backbone.")}}, backbone)
    other = tmp_path / "five_classes.pth"
    torch.save({"model": build_model(_cfg(tmp_path, "", num_classes=5)).state_dict()}, other)
    return model, full, backbone, other


def test_eval_only_refuses_backbone_only_and_other_heads(tmp_path, checkpoints):
    _, full, backbone, other = checkpoints
    with pytest.raises(PartialWeightsError, match=r"roi_heads\.box_predictor\.\*: missing") as e:
        evaluate(_cfg(tmp_path, backbone))
    assert "backbone_only.pth" in str(e.value) and "proposal_generator.rpn_head.*" in str(e.value)
    with pytest.raises(PartialWeightsError, match=r"roi_heads\.box_predictor\.\*: shape mismatch"):
        evaluate(_cfg(tmp_path, other))
    with pytest.raises(PartialWeightsError, match=r"no weights given"):
        evaluate(_cfg(tmp_path, ""))
    assert evaluate(_cfg(tmp_path, full)) is not None  # a whole detector passes
    assert evaluate(_cfg(tmp_path, backbone), allow_partial_weights=True) is not None
    assert argument_parser().parse_args(["--allow-partial-weights"]).allow_partial_weights


def test_check_names_groups_and_passes_a_whole_detector(checkpoints):
    model, full, backbone, other = checkpoints
    assert check_complete_weights(model, full) == []
    problems = check_complete_weights(model, other, allow_partial=True)
    assert problems == [
        "roi_heads.box_predictor.*: shape mismatch (4 keys; e.g. "
        "roi_heads.box_predictor.cls_score.weight: checkpoint (6, 32) vs model (3, 32))"
    ]
    assert any(
        p.startswith("roi_heads.box_head.*: missing")
        for p in check_complete_weights(model, backbone, allow_partial=True)
    )
    assert key_groups(["a.b.c", "a.b.d", "a.e", "f"]) == {"a.b.*": 2, "a.e": 1, "f": 1}


def test_evaluation_reads_the_weights_file_once(tmp_path, checkpoints, monkeypatch):
    """--eval-only checks completeness from the same read that loads the weights, and a refused
    file leaves the model's parameters as they were (nothing loaded before the check)."""
    from resnext_det.weights import checkpointer, loader

    _, full, backbone, _ = checkpoints
    reads = []
    real = loader.read_weights

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpointer, "read_weights", counted)
    monkeypatch.setattr(loader, "read_weights", counted)
    evaluate(_cfg(tmp_path, full))
    assert reads == [str(full)]

    model = build_model(_cfg(tmp_path, ""))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PartialWeightsError):
        checkpointer.ResNeXtCheckpointer(model).load_complete(str(backbone))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
