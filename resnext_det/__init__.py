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

import warnings as _warnings  # noqa: E402

# detectron2's modeling/box_regression.py decorates two functions with @torch.jit.script when
# imported; torch attributes that notice to itself. It is hidden during this import only:
# catch_warnings restores the caller's filters on the way out, so importing this package leaves
# the process's warning and logging set-up as it was (resnext_det.runtime is for the commands).
with _warnings.catch_warnings():
    _warnings.filterwarnings(
        "ignore",
        message=r"`torch\.jit\.script` is deprecated",
        category=FutureWarning,
        module=r"torch\.jit\._script",
    )
    import detectron2.modeling  # noqa: E402,F401

from .backbone import (  # noqa: E402  (registers the builders)
    ResNeXt,
    build_resnext_backbone,
    build_resnext_fpn_backbone,
    build_resnext_retinanet_fpn_backbone,
    make_resnext,
)
from .blocks import BLOCK_FORMS, to_grouped_state_dict  # noqa: E402
from .complexity import backbone_complexity  # noqa: E402
from .config import add_resnext_config, load_config  # noqa: E402
from .export import export_backbone  # noqa: E402
from .spec import (  # noqa: E402
    ARCHITECTURES,
    VARIANTS,
    ResNeXtSpec,
    equal_complexity_width,
)
from .speed import optimize_for_inference  # noqa: E402
from .version import __version__  # noqa: E402
from .weights import configure_for_weights, load_pretrained  # noqa: E402

__all__ = [
    "__version__",
    "ARCHITECTURES",
    "BLOCK_FORMS",
    "VARIANTS",
    "ResNeXt",
    "ResNeXtSpec",
    "add_resnext_config",
    "load_config",
    "build_resnext_backbone",
    "build_resnext_fpn_backbone",
    "build_resnext_retinanet_fpn_backbone",
    "make_resnext",
    "to_grouped_state_dict",
    "backbone_complexity",
    "configure_for_weights",
    "equal_complexity_width",
    "export_backbone",
    "load_pretrained",
    "optimize_for_inference",
]
