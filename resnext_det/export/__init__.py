"""Export the backbone of a trained detector to the formats other code reads.

A detector trained here is a detectron2 checkpoint; its backbone is worth reusing elsewhere: as a
torchvision or timm ResNeXt, as a detectron2 ``MODEL.WEIGHTS`` file for another detector, or as a
traced TorchScript / ONNX graph. Every export:

* builds the backbone from the config and loads the checkpoint into it first, so a config that does
  not match the checkpoint stops with the key and both shapes instead of producing a wrong file;
* comes from the grouped block form (:func:`resnext_det.to_grouped_state_dict`), whatever form the
  model was trained in: the grouped layout is detectron2's, torchvision's and timm's (after
  renaming), and the fastest to run;
* is written atomically (temporary file in the same folder, then ``os.replace``), with a metadata
  sidecar ``<out>.json`` (architecture, input convention, source checkpoint and its sha256, what
  is not in the file), written last, so that a sidecar always describes a complete export.

Formats (``FORMATS``): ``torchvision``, ``timm`` and ``detectron2`` are state dicts, stored in a
``torch`` (pickle) or ``safetensors`` container (``CONTAINERS``); ``torchscript`` and ``onnx`` are
traced graphs of the backbone (res2..res5, or p2..p6 with ``fpn=True``) that take any batch size and
image size (a multiple of the backbone's ``size_divisibility``), checked after writing against the
eager model on two image sizes.
"""

from ..weights.io import sha256_of
from .api import ExportResult, export_backbone
from .formats import (
    CONTAINERS,
    FORMATS,
    ONNX_OPSET,
    STATE_DICT_FORMATS,
    TRACED_FORMATS,
    VERIFY_TOLERANCE,
)

__all__ = [
    "FORMATS",
    "CONTAINERS",
    "STATE_DICT_FORMATS",
    "TRACED_FORMATS",
    "VERIFY_TOLERANCE",
    "ONNX_OPSET",
    "ExportResult",
    "export_backbone",
    "sha256_of",
]
