"""The detector's prediction layers in fp32 inside a bf16/fp16 inference.

Under ``torch.autocast`` every convolution and linear layer computes in bf16, the few that turn
features into the detector's outputs too: the RPN's objectness and anchor deltas, the box
predictor's class scores and box deltas, RetinaNet's, the mask head's logits. Their outputs are
what the detector ranks, thresholds and decodes into boxes, and bf16 keeps 8 bits of them: scores
0.004 apart tie, and a box delta moves its box by a fraction of a percent of its size. Kept in
fp32, they cost less than 0.1% of the detector's multiply-adds; what they save in AP on trained
detectors is measured by ``benchmarks/bf16_accuracy.py`` (docs/benchmarks.md, "End to end").

:func:`fp32_prediction_layers` makes those layers (by their names in detectron2's heads) compute in
fp32 whatever autocast says, keeping their parameters (and so checkpoints and state-dict keys).
:func:`resnext_det.speed.prepare_for_inference` applies it with a mixed-precision dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FP32Conv2d", "FP32Linear", "PREDICTION_LAYERS", "fp32_prediction_layers"]

# Head class name -> its prediction layers (detectron2's attribute names).
PREDICTION_LAYERS: dict[str, tuple[str, ...]] = {
    "StandardRPNHead": ("objectness_logits", "anchor_deltas"),
    "FastRCNNOutputLayers": ("cls_score", "bbox_pred"),
    "RetinaNetHead": ("cls_score", "bbox_pred"),
    "MaskRCNNConvUpsampleHead": ("predictor",),
}


def _fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class FP32Linear(nn.Linear):
    """``nn.Linear`` that computes in fp32 inside autocast (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.weight.float(), _fp32(self.bias))


class FP32Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes in fp32 inside autocast (same parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self._conv_forward(x.float(), self.weight.float(), _fp32(self.bias))


_FP32 = {nn.Linear: FP32Linear, nn.Conv2d: FP32Conv2d}


def fp32_prediction_layers(model: nn.Module) -> int:
    """Make the prediction layers of ``model``'s heads (:data:`PREDICTION_LAYERS`) compute in
    fp32 under autocast; in place, idempotent; returns how many changed. Only plain
    ``nn.Linear`` / ``nn.Conv2d`` layers are changed (a subclass may compute otherwise)."""
    changed = 0
    for head in model.modules():
        for name in PREDICTION_LAYERS.get(type(head).__name__, ()):
            layer = getattr(head, name, None)
            if type(layer) in _FP32:
                layer.__class__ = _FP32[type(layer)]  # same fields, another forward
                changed += 1
    return changed
