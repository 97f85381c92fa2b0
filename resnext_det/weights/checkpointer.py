"""detectron2's ``DetectionCheckpointer`` for every layout :mod:`resnext_det.weights` reads.

``cfg.MODEL.WEIGHTS = "resnext50_32x4d-1a0047aa.pth"`` (a torchvision file), a Detectron ``.pkl``,
a timm or safetensors file, a detectron2 checkpoint or the trainer's own ``model_*.pth`` all go
through :meth:`ResNeXtCheckpointer._load_file`, so ``resume_or_load``, ``--resume`` and
``MODEL.WEIGHTS`` need no other change. Names are placed exactly (detectron2's own loader matches
``__author__``-marked files by name suffixes, and leaves Caffe2's fused BN an epsilon off).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import IO, Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..io import AtomicWriteError, atomic_write
from .hub import resolve_weights_path
from .loader import plan_load, read_weights

__all__ = ["ResNeXtCheckpointer", "dataset_classes", "model_metadata"]


def dataset_classes(dataset_names: Sequence[str]) -> dict[str, Any]:
    """The class names a model trained on ``dataset_names`` predicts, from detectron2's
    ``MetadataCatalog``: ``{"thing_classes": [...]}``, with ``"thing_dataset_ids"`` (the data
    set's category id of each contiguous class) where the catalog maps them; ``{}`` when no data
    set has class names. Saved in the checkpoint's ``resnext_det`` record, so that a process
    that never registered the data set (``resnext-det predict``) still labels "raccoon", not "0".
    """
    from detectron2.data import MetadataCatalog

    for name in dataset_names:
        meta = MetadataCatalog.get(name).as_dict()
        classes = meta.get("thing_classes")
        if not classes:
            continue
        record: dict[str, Any] = {"thing_classes": [str(c) for c in classes]}
        id_map = meta.get("thing_dataset_id_to_contiguous_id")
        if id_map:
            by_index = {v: k for k, v in id_map.items()}
            record["thing_dataset_ids"] = [int(by_index[i]) for i in range(len(classes))]
        return record
    return {}


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
    #: What the model predicts (:func:`dataset_classes`), saved with every checkpoint; the
    #: trainer sets it from ``DATASETS.TRAIN``.
    classes: dict[str, Any] = {}
    # (allow_partial, what) while load_complete runs; the problems it found.
    _completeness: tuple[bool, str] | None = None
    _problems: list[str] = []

    def load_complete(
        self, path: str, *, resume: bool = False, allow_partial: bool = False, what: str = ""
    ) -> list[str]:
        """``resume_or_load(path, resume=resume)`` for scoring a detector: weights that leave a
        parameter at its random initialisation are refused before anything is loaded
        (:func:`~resnext_det.weights.complete.check_load_report`), from the same read of the
        file that loads it.

        Returns:
            the problems, one per group of keys (only with ``allow_partial``; the caller logs
            them); empty when every parameter got a value.

        Raises:
            PartialWeightsError: a parameter would stay random (without ``allow_partial``).
        """
        from .complete import check_complete_weights

        if not path and not (resume and self.has_checkpoint()):
            return check_complete_weights(self.model, path, allow_partial=allow_partial, what=what)
        self._completeness, self._problems = (allow_partial, what), []
        try:
            self.resume_or_load(path, resume=resume)
        finally:
            self._completeness = None
        return self._problems

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # torchvision://, timm:// and http(s):// names: a verified file in torch's hub cache,
        # before fvcore's load hands them to iopath (which knows neither names nor hashes).
        if path and "://" not in path and not os.path.isfile(path):  # fvcore: an assertion
            where = "is a folder" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(
                f"weights {path!r} {where} (MODEL.WEIGHTS; relative paths are from "
                f"{os.getcwd()}): give a checkpoint file"
            )
        return super().load(resolve_weights_path(path) if path else path, *args, **kwargs)

    def _load_file(self, filename: str) -> dict[str, Any]:
        weights = read_weights(filename)
        state, report = plan_load(self.model, weights)
        self.logger.info("%s", report.summary())
        self.logger.debug("%s", report.table())
        if self._completeness is not None:
            from .complete import check_load_report

            allow_partial, what = self._completeness
            self._problems = check_load_report(report, allow_partial=allow_partial, what=what)
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
        metadata = {**model_metadata(self.model), **self.classes}
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
