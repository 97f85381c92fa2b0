"""State-dict exports (torchvision, timm, detectron2): the tensors under the target's key names, and
the writer of each container (torch pickle, safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from detectron2.config import CfgNode
from torch import nn

from ..weights.torchvision import detectron2_to_torchvision
from .formats import AUTHOR

__all__ = ["state_dict_payload", "container_writer"]


def state_dict_payload(
    format: str, grouped: dict[str, torch.Tensor], fpn_model: nn.Module | None, cfg: CfgNode
) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict export, under the target's key names."""
    grouped = {k: v.detach().clone() for k, v in grouped.items()}
    if format in ("torchvision", "timm"):
        return detectron2_to_torchvision(grouped)
    # detectron2: the layout the config's detector expects.
    c4 = cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads" and "res5" not in cfg.MODEL.RESNETS.OUT_FEATURES
    fpn_cfg = fpn_model is not None or "fpn" in cfg.MODEL.BACKBONE.NAME.lower()
    out: dict[str, torch.Tensor] = {}
    for k, v in grouped.items():
        if fpn_cfg:
            out[f"backbone.bottom_up.{k}"] = v
        elif c4 and k.startswith("res5."):
            out[f"roi_heads.{k}"] = v
        else:
            out[f"backbone.{k}"] = v
    if fpn_model is not None:
        for k, v in fpn_model.state_dict().items():
            if not k.startswith("bottom_up."):
                out[f"backbone.{k}"] = v.detach().clone()
    return out


def container_writer(
    container: str, format: str, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Callable[[Path], None]:
    def write_torch(path: Path) -> None:
        if format == "detectron2":
            # The shape of detectron2's own checkpoints; matching_heuristics=False: the names are
            # exact, so DetectionCheckpointer loads them as they are.
            obj: Any = {"model": tensors, "__author__": AUTHOR, "matching_heuristics": False}
        else:
            obj = tensors
        torch.save(obj, path)

    def write_safetensors(path: Path) -> None:
        from safetensors.torch import save_file

        # safetensors holds str -> str metadata: the sidecar's top-level fields, as json.
        meta = {k: json.dumps(v) for k, v in metadata.items()}
        if format == "detectron2":
            meta.update(__author__=AUTHOR, matching_heuristics="False")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)

    return write_safetensors if container == "safetensors" else write_torch
