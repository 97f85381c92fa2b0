"""detectron2's ``DetectionCheckpointer`` for every layout :mod:`resnext_det.weights` reads.

``cfg.MODEL.WEIGHTS = "resnext50_32x4d-1a0047aa.pth"`` (a torchvision file), a Detectron ``.pkl``,
a timm or safetensors file, a detectron2 checkpoint or the trainer's own ``model_*.pth`` all go
through :meth:`ResNeXtCheckpointer._load_file`, so ``resume_or_load``, ``--resume`` and
``MODEL.WEIGHTS`` need no other change. Names are placed exactly (detectron2's own loader matches
``__author__``-marked files by name suffixes, and leaves Caffe2's fused BN an epsilon off).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..io import atomic_write
from .hub import resolve_weights_path
from .loader import plan_load, read_weights

__all__ = ["ResNeXtCheckpointer", "model_metadata"]


def model_metadata(model: nn.Module) -> dict[str, Any]:
    """The conventions a detector was built with (pixel statistics, input format, stride place),
    as the ``resnext_det`` record :func:`~resnext_det.weights.read_weights` reads back."""
    record: dict[str, Any] = {}
    if isinstance(getattr(model, "pixel_mean", None), torch.Tensor):
        # 6 significant digits undo float32 storage: 103.53, not 103.52999877929688
        record["pixel_mean"] = [float(f"{v:.6g}") for v in model.pixel_mean.flatten().tolist()]
        record["pixel_std"] = [float(f"{v:.6g}") for v in model.pixel_std.flatten().tolist()]
    if isinstance(getattr(model, "input_format", None), str):
        record["input_format"] = model.input_format
    spec = next((m.spec for m in model.modules() if hasattr(m, "spec")), None)
    if spec is not None:
        record["stride_in_1x1"] = bool(spec.stride_in_1x1)
        record["architecture"] = spec.name
    if record:
        record["source"] = f"conventions of the {type(model).__name__} that saved this checkpoint"
    return {"conventions": record} if record else {}


class ResNeXtCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` that reads torchvision, timm, Caffe2 and detectron2 files.

    Loading places the ResNet under the model's bottom-up prefix (``backbone.bottom_up.`` for FPN,
    ``backbone.`` + ``roi_heads.res5.`` for C4) by exact names, stops on a checkpoint of another
    architecture, and logs detectron2's matched-weights table. Saving is atomic (a crash never
    leaves a half-written ``model_final.pth``) and records the model's input conventions.

    Args: as :class:`detectron2.checkpoint.DetectionCheckpointer`.
    """

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # torchvision://, timm:// and http(s):// names: a verified file in torch's hub cache,
        # before fvcore's load hands them to iopath (which knows neither names nor hashes).
        return super().load(resolve_weights_path(path) if path else path, *args, **kwargs)

    def _load_file(self, filename: str) -> dict[str, Any]:
        weights = read_weights(filename)
        state, report = plan_load(self.model, weights)
        self.logger.info("%s", report.table())
        # No "matching_heuristics": the names are already the model's, so detectron2's
        # _load_model loads them as they are (no suffix matching).
        return {"model": state, **weights.training_state}

    def save(self, name: str, **kwargs: Any) -> None:
        """As fvcore's ``Checkpointer.save``, but atomic and with the model's conventions."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data["resnext_det"] = model_metadata(self.model)
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name must be a plain file name; got {name!r}")
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)
