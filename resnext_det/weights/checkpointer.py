"""detectron2's ``DetectionCheckpointer`` for every layout :mod:`resnext_det.weights` reads.

``cfg.MODEL.WEIGHTS = "resnext50_32x4d-1a0047aa.pth"`` (a torchvision file), a Detectron ``.pkl``,
a timm or safetensors file, a detectron2 checkpoint or the trainer's own ``model_*.pth`` all go
through :meth:`ResNeXtCheckpointer._load_file`, so ``resume_or_load``, ``--resume`` and
``MODEL.WEIGHTS`` need no other change. Names are placed exactly (detectron2's own loader matches
``__author__``-marked files by name suffixes, and leaves Caffe2's fused BN an epsilon off).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO, Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..io import AtomicWriteError, atomic_write
from .conventions import PRESETS, Conventions
from .io import save_checkpoint
from .loader import Architecture, Weights, plan_load, read_weights

__all__ = ["ResNeXtCheckpointer", "config_lines", "convert_checkpoint", "model_metadata"]


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
    architecture, and logs detectron2's matched-weights table.

    Saving is fvcore's ``save`` made durable: the checkpoint file, then ``last_checkpoint``, each
    written through :func:`resnext_det.io.atomic_write` (a kill or a full disk never leaves a
    half-written ``model_final.pth``, and ``last_checkpoint`` only moves once the file it names is
    whole), with the model's input conventions recorded beside the weights. A failed write raises
    :attr:`write_error` naming the file and the checkpoint that is still intact. Paths with a
    ``scheme://`` (remote storage through iopath) keep fvcore's non-atomic save.

    Args: as :class:`detectron2.checkpoint.DetectionCheckpointer` (whose ``__init__`` already
    unwraps ``DistributedDataParallel``, so ``self.model`` has the names that are saved).
    """

    #: The :class:`~resnext_det.io.AtomicWriteError` a failed save raises.
    write_error: type[AtomicWriteError] = AtomicWriteError

    def _load_file(self, filename: str) -> dict[str, Any]:
        weights = read_weights(filename)
        state, report = plan_load(self.model, weights)
        self.logger.info("%s", report.table())
        # No "matching_heuristics": the names are already the model's, so detectron2's
        # _load_model loads them as they are (no suffix matching).
        return {"model": state, **weights.training_state}

    def _is_local(self) -> bool:
        return "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs: Any) -> None:
        """As fvcore's ``Checkpointer.save``, but atomic and with the model's conventions."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            return super().save(name, **kwargs)
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        metadata = model_metadata(self.model)
        if metadata:
            data["resnext_det"] = metadata
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name must be a plain file name; got {name!r}")
        self.logger.info("Saving checkpoint to %s", save_file)
        self._write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        self._write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
            done=f"{last_filename_basename} was written whole, but ",
        )

    def _write(self, path: str, write: Callable[[IO[bytes]], Any], *, done: str = "") -> None:
        """Every file of a save is written here; a failure says what is still intact."""
        try:
            atomic_write(path, write, error=self.write_error)
        except AtomicWriteError as exc:
            raise type(exc)(exc.errno, f"{exc.strerror}. {done}{self._intact()}") from exc

    def _intact(self) -> str:
        if self.has_checkpoint() and self.get_checkpoint_file():
            return (
                f"the previous checkpoint, {self.get_checkpoint_file()} (named in "
                f"{os.path.join(self.save_dir, 'last_checkpoint')}), is intact: resume from it "
                "(train_net.py --resume)"
            )
        return f"no earlier checkpoint exists in {self.save_dir}"


def config_lines(path: str, conventions: Conventions, architecture: Architecture | None) -> str:
    """The yaml to go with converted weights: WEIGHTS, input conventions and architecture."""
    fmt = lambda v: "[" + ", ".join(f"{x:g}" for x in v) + "]"  # noqa: E731
    lines = ["MODEL:", f'  WEIGHTS: "{path}"']
    if conventions.pixel_mean is not None:
        lines.append(f"  PIXEL_MEAN: {fmt(conventions.pixel_mean)}")
    if conventions.pixel_std is not None:
        lines.append(f"  PIXEL_STD: {fmt(conventions.pixel_std)}")
    lines.append("  RESNETS:")
    if architecture is not None:
        depth = architecture.depth
        lines.append(
            f"    DEPTH: {depth}"
            if depth
            else f"    # DEPTH: blocks per stage {list(architecture.blocks)} match no depth"
        )
        lines.append(f"    NUM_GROUPS: {architecture.cardinality}")
        lines.append(f"    WIDTH_PER_GROUP: {architecture.width_per_group}")
        if architecture.stem_out_channels != 64:
            lines.append(f"    STEM_OUT_CHANNELS: {architecture.stem_out_channels}")
        if architecture.res2_out_channels not in (256, -1):
            lines.append(f"    RES2_OUT_CHANNELS: {architecture.res2_out_channels}")
    if conventions.stride_in_1x1 is not None:
        lines.append(f"    STRIDE_IN_1X1: {conventions.stride_in_1x1}")
    if conventions.input_format is not None:
        lines += ["INPUT:", f'  FORMAT: "{conventions.input_format}"']
    return "\n".join(lines)


def convert_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    preset: str | None = None,
) -> tuple[Weights, str]:
    """Write ``src`` (any supported layout) as a detectron2-ready file, atomically.

    The file is ``{"model": tensors, "__author__", "matching_heuristics": True, "resnext_det":
    {conventions, architecture, source}}``: ImageNet weights under bottom-up names (``stem.*``,
    ``res2.*``, ...), a detector's under its full names; grouped block layout. Stock detectron2
    loads it by suffix matching (``matching_heuristics``), :class:`ResNeXtCheckpointer` exactly.
    A ``.pkl`` ``out`` holds numpy arrays (what detectron2 reads from ``.pkl``), anything else is a
    ``torch.save`` file.

    Args:
        src: the weights to convert.
        out: where to write.
        format: the source layout, or "auto".
        preset: one of :data:`~resnext_det.weights.PRESETS` for weights whose conventions the
            content cannot decide (or to override what was inferred).

    Returns:
        ``(weights, yaml)``: what was read, and the config lines to go with ``out``.

    Raises:
        ValueError: unknown preset; conventions the file cannot decide and no preset.
    """
    weights = read_weights(src, format)
    conventions = weights.conventions
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
        conventions = PRESETS[preset]
    elif conventions.must_pin:
        raise ValueError(
            f"cannot tell the input conventions of '{src}' from its content: "
            f"{conventions.undecided}. Pass a preset ({', '.join(PRESETS)}) to say which."
        )
    if weights.layout == "detectron2":
        tensors = {weights.mapping[k]: v for k, v in weights.resnet.items()} | weights.other
    else:
        tensors = dict(weights.resnet)
    record = {
        "conventions": conventions.to_dict(),
        "architecture": weights.architecture.to_dict() if weights.architecture else None,
        "source": {
            "file": os.path.basename(os.fspath(src)),
            "layout": weights.layout,
            "container": weights.container,
        },
    }
    save_checkpoint(
        {
            "model": tensors,
            "__author__": f"resnext_det convert_weights ({weights.layout})",
            "matching_heuristics": True,
            "resnext_det": record,
        },
        out,
    )
    return weights, config_lines(os.fspath(out), conventions, weights.architecture)
