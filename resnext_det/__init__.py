"""ResNeXt backbones for detectron2.

Importing this package registers ``build_resnext_backbone`` and ``build_resnext_fpn_backbone`` in
detectron2's ``BACKBONE_REGISTRY``; call :func:`add_resnext_config` on a config before merging a
yaml that uses ``MODEL.RESNEXT``.
"""

from __future__ import annotations

try:
    import detectron2  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by tests/test_env.py in a subprocess
    raise ImportError(
        "resnext_det needs detectron2, which is not installed in this Python "
        f"({exc}). detectron2 is not on PyPI under its own name: from a checkout of resnext-det "
        "run 'tools/setup_env.sh' (it builds detectron2 0.6 from the pb1-detectron2 sdist), or "
        "install "
        "detectron2 from source ('pip install --no-build-isolation "
        "git+https://github.com/facebookresearch/detectron2.git') and then 'pip install -e .'."
    ) from exc

__version__ = "0.1.0"

from .backbone import (  # noqa: E402  (registers the builders)
    ARCHITECTURES,
    ResNeXt,
    ResNeXtSpec,
    build_resnext_backbone,
    build_resnext_fpn_backbone,
    make_resnext,
)
from .blocks import BLOCK_FORMS, to_grouped_state_dict  # noqa: E402
from .config import add_resnext_config, load_config  # noqa: E402

# The rest of the public API is imported on first use, so `import resnext_det` (which registers
# the backbones) stays light. Name -> module that defines it.
_LAZY = {
    "equal_complexity_width": "resnext_det.complexity",
    "backbone_complexity": "resnext_det.complexity",
    "load_pretrained": "resnext_det.weights",
    "configure_for_weights": "resnext_det.weights",
    "optimize_for_inference": "resnext_det.speed",
    "export_backbone": "resnext_det.export",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resnext_det' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "BLOCK_FORMS",
    "ResNeXt",
    "ResNeXtSpec",
    "add_resnext_config",
    "load_config",
    "build_resnext_backbone",
    "build_resnext_fpn_backbone",
    "make_resnext",
    "to_grouped_state_dict",
    *_LAZY,
]
