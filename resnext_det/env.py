"""``python -m resnext_det.env``: what this environment holds, for bug reports and set-up checks.

Prints Python, torch, torchvision and detectron2 versions and where detectron2 came from, CUDA
availability, and which of detectron2's compiled ops are available.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch
import torchvision

import resnext_det

# The ops of detectron2 0.6's csrc/vision.cpp that its Python code calls.
DETECTRON2_OPS = (
    "box_iou_rotated",
    "nms_rotated",
    "roi_align_rotated_forward",
    "deform_conv_forward",
    "modulated_deform_conv_forward",
    "COCOevalAccumulate",
    "COCOevalEvaluateImages",
)


def detectron2_source() -> str:
    """Where the installed detectron2 came from: the project's no-ops build, or another one."""
    import detectron2
    from detectron2 import _C

    try:
        version = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(detectron2, "__version__", "unknown")
    if getattr(_C, "IS_STAND_IN", False):
        kind = "pb1-detectron2 sdist, built by tools/build_detectron2_wheel.py (no compiled ops)"
    else:
        kind = "a build with compiled ops"
    return f"{version} from {detectron2.__path__[0]} ({kind})"


def compiled_ops() -> dict[str, bool]:
    """Which detectron2 compiled ops can be called here."""
    from detectron2 import _C

    available = {}
    for op in DETECTRON2_OPS:
        try:
            getattr(_C, op)
            available[op] = True
        except (AttributeError, RuntimeError):
            available[op] = False
    return available


def collect_env() -> list[tuple[str, str]]:
    rows = [
        ("resnext_det", f"{resnext_det.__version__} from {resnext_det.__path__[0]}"),
        ("Python", f"{sys.version.split()[0]} ({platform.platform()})"),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("detectron2", detectron2_source()),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU", torch.cuda.get_device_name(0)))
    rows.append(("CPU threads", str(torch.get_num_threads())))
    ops = compiled_ops()
    rows.append(
        (
            "detectron2 compiled ops",
            ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in ops.items()),
        )
    )
    return rows


def main() -> None:
    rows = collect_env()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
