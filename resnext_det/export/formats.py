"""What the export writes: its formats and containers, the tolerance of the traced check, and the
checks of the options against each other (before anything is read)."""

from __future__ import annotations

from pathlib import Path

from ..version import __version__

__all__ = [
    "FORMATS",
    "STATE_DICT_FORMATS",
    "TRACED_FORMATS",
    "CONTAINERS",
    "VERIFY_TOLERANCE",
    "ONNX_OPSET",
    "AUTHOR",
    "BN_NORMS",
    "check_options",
]

# Format -> what it is. State-dict formats go into a container; traced formats are their own file.
FORMATS: dict[str, str] = {
    "torchvision": "state dict for torchvision.models.ResNet (layer1..layer4)",
    "timm": "state dict for timm.models.resnet.ResNet (same key names as torchvision)",
    "detectron2": "detectron2 checkpoint of the backbone alone, for MODEL.WEIGHTS",
    "torchscript": "traced TorchScript module: images -> tuple of feature maps",
    "onnx": "ONNX graph: images -> feature maps, dynamic batch size and image size",
}
STATE_DICT_FORMATS = ("torchvision", "timm", "detectron2")
TRACED_FORMATS = ("torchscript", "onnx")
CONTAINERS = ("torch", "safetensors")

# Outputs of traced exports must match the eager model this closely (max |diff| / max |output|).
VERIFY_TOLERANCE = 1e-4
# The legacy (TorchScript-based) ONNX exporter: it takes dynamic_axes and needs no onnxscript,
# which the torch.export-based default needs and which is not a dependency of this project.
ONNX_OPSET = 17
AUTHOR = f"resnext_det {__version__} export_backbone"
# detectron2 norms whose eval-mode forward and state dict are BatchNorm's.
BN_NORMS = ("FrozenBN", "BN", "SyncBN", "naiveSyncBN")


def check_options(format: str, out: Path, *, fpn: bool, fold_bn: bool, container: str | None):
    if out.is_dir():
        raise ValueError(f"out must be a file path; {out} is a directory")
    if fpn and format in ("torchvision", "timm"):
        raise ValueError(
            f"{format}'s ResNet has no FPN, so fpn=True (--fpn) cannot be exported as {format}; "
            f"use one of detectron2, torchscript, onnx for the FPN"
        )
    if fold_bn and format not in TRACED_FORMATS:
        raise ValueError(
            f"fold_bn (--fold-bn) applies to the traced formats ({', '.join(TRACED_FORMATS)}); "
            f"a {format} state dict keeps its BatchNorms so that {format}'s model loads it"
        )
    if format in TRACED_FORMATS:
        if container is not None:
            raise ValueError(
                f"container (--container) applies to the state-dict formats "
                f"({', '.join(STATE_DICT_FORMATS)}); a {format} export is its own file format"
            )
        return None
    if container is None:
        container = "safetensors" if out.suffix == ".safetensors" else "torch"
    if container not in CONTAINERS:
        raise ValueError(f"container must be one of {', '.join(CONTAINERS)}; got {container!r}")
    return container
