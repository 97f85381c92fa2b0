"""The project's configs by name, as ``detectron2.model_zoo`` gives detectron2's.

Names are paths relative to the configs folder: ``faster_rcnn_X_50_32x4d_FPN_1x.yaml``,
``demo/faster_rcnn_X_demo.yaml``, ``lazy/faster_rcnn_X_50_32x4d_FPN_1x.py``. In a checkout they
are the files of ``configs/``; an installed wheel or sdist carries the same files as package data
(``resnext_det/configs``, mapped from ``configs/`` by pyproject.toml), so the names work without
a clone.

Example::

    >>> from resnext_det import model_zoo
    >>> cfg = model_zoo.get_config("faster_rcnn_X_50_32x4d_FPN_1x.yaml")   # a yacs CfgNode
    >>> lazy = model_zoo.get_config("lazy/faster_rcnn_X_50_32x4d_FPN_1x.py")  # a LazyConfig
    >>> model = model_zoo.get("demo/faster_rcnn_X_demo.yaml", device="cpu")   # untrained
    >>> model = model_zoo.get("faster_rcnn_X_101_32x8d_FPN_3x.yaml", trained=True)  # detectron2's
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import config_root, config_value

__all__ = [
    "TRAINED_IN_DETECTRON2",
    "config_root",
    "get",
    "get_config",
    "get_config_file",
    "list_configs",
    "trained_weights",
]

_SUFFIXES = (".yaml", ".py")


def list_configs() -> list[str]:
    """Every config name, sorted (``Base-*`` files included: they are ``_BASE_`` targets)."""
    root = config_root()
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix in _SUFFIXES and p.is_file() and "__pycache__" not in p.parts
    )


def get_config_file(name: str) -> str:
    """The absolute path of config ``name`` (see the module docstring for names).

    Raises:
        FileNotFoundError: no such config; the message lists the names there are.
        ValueError: ``name`` is absolute or leaves the configs folder.
    """
    root = config_root()
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"config names are relative to {root} and stay inside it; got {name!r}")
    path = root / name
    if not path.is_file() or path.suffix not in _SUFFIXES:
        names = ", ".join(n for n in list_configs() if not Path(n).name.startswith("Base-"))
        raise FileNotFoundError(
            f"no config {name!r} in resnext_det's configs ({root}); there are: {names}"
        )
    return str(path)


def get_config(name: str, opts: list[Any] | tuple[Any, ...] = ()):
    """Config ``name``: a yacs ``CfgNode`` (``.yaml``, with ``KEY VALUE`` ``opts``) or a
    LazyConfig (``.py``, with ``key=value`` ``opts``). The package's own files only: a LazyConfig
    runs code, and these are the ones it ships."""
    path = get_config_file(name)
    if path.endswith(".py"):
        from .lazy import load_lazy_config

        return load_lazy_config(path, [str(o) for o in opts])
    from .config import load_config

    return load_config(path, list(opts))


# The project's configs whose detector detectron2's model zoo trained (same architecture, same
# parameter names): config name -> detectron2's config path. Its checkpoint URL and the input
# conventions it was trained with are read from detectron2.model_zoo, not copied here.
TRAINED_IN_DETECTRON2 = {
    "faster_rcnn_R_50_FPN_1x.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "faster_rcnn_R_50_FPN_3x.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "faster_rcnn_R_101_FPN_3x.yaml": "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "faster_rcnn_X_101_32x8d_FPN_3x.yaml": "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    "mask_rcnn_X_101_32x8d_FPN_3x.yaml": (
        "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml"
    ),
    "keypoint_rcnn_R_101_FPN_3x.yaml": "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml",
    "keypoint_rcnn_X_101_32x8d_FPN_3x.yaml": "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml",
    "lvis_v0.5/mask_rcnn_R_101_FPN_1x.yaml": (
        "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml"
    ),
    "lvis_v0.5/mask_rcnn_X_101_32x8d_FPN_1x.yaml": (
        "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml"
    ),
}


def trained_weights(name: str) -> tuple[str, dict[str, Any]]:
    """The trained checkpoint of config ``name`` in detectron2's model zoo: its URL (fetched,
    cached and checked by :mod:`resnext_det.weights.hub`, or taken from the
    ``RESNEXT_DET_WEIGHTS_MIRROR`` folder) and the input conventions it was trained with, as
    ``{"INPUT.FORMAT": ..., "MODEL.PIXEL_MEAN": ..., "MODEL.PIXEL_STD": ...,
    "MODEL.RESNETS.STRIDE_IN_1X1": ...}`` (detectron2's X-101 models are Caffe2-style: BGR, their
    own PIXEL_STD, the stride in the 3x3). Downloads nothing.

    Raises:
        ValueError: no trained checkpoint exists for ``name`` (the message lists those that do).
    """
    if name not in TRAINED_IN_DETECTRON2:
        get_config_file(name)  # an unknown name says so first
        raise ValueError(
            f"no trained checkpoint for config {name!r}: detectron2's model zoo has none of this "
            f"detector, and resnext-det publishes none (train it: resnext-det train "
            f"--config-file {name}). Trained ones exist for: "
            f"{', '.join(sorted(TRAINED_IN_DETECTRON2))}"
        )
    from detectron2 import model_zoo as d2_zoo

    from .weights.records import CFG_KEYS

    theirs = d2_zoo.get_config(TRAINED_IN_DETECTRON2[name])
    conventions: dict[str, Any] = {}
    for key in CFG_KEYS.values():
        node = config_value(theirs, key)
        conventions[key] = list(node) if isinstance(node, (list, tuple)) else node
    return d2_zoo.get_checkpoint_url(TRAINED_IN_DETECTRON2[name]), conventions


def _default_device() -> str:
    import torch

    # As detectron2.model_zoo.get: a machine without CUDA builds on the CPU.
    return "cuda" if torch.cuda.is_available() else "cpu"


def get(
    name: str,
    *,
    trained: bool = False,
    device: str | None = None,
    opts: list[Any] | tuple[Any, ...] = (),
):
    """The model of config ``name`` on ``device`` (default: the config's, or the CPU on a
    machine without CUDA, as ``detectron2.model_zoo.get``).

    Args:
        trained: load the trained checkpoint (:func:`trained_weights`: detectron2's model zoo's,
            with the input conventions it was trained with); otherwise the model is untrained
            (or ``MODEL.WEIGHTS``-initialised by the caller).
        opts: config overrides, applied after the trained checkpoint's conventions.

    Raises:
        ValueError: ``trained`` for a config without a trained checkpoint (names those with one).
    """
    if name.endswith(".py"):
        if trained:
            raise ValueError(
                f"trained=True takes a yacs config name; {name!r} is a LazyConfig (give its "
                "train.init_checkpoint yourself)"
            )
        from detectron2.config import instantiate

        cfg = get_config(name, opts)
        wanted = device or str(cfg.train.device)
        if wanted.startswith("cuda") and device is None:
            wanted = _default_device()
        return instantiate(cfg.model).to(wanted)
    from detectron2.modeling import build_model

    url, conventions = trained_weights(name) if trained else ("", {})
    pairs = [x for key, value in conventions.items() for x in (key, value)]
    cfg = get_config(name, [*pairs, *(["MODEL.WEIGHTS", url] if url else []), *opts])
    if device is not None:
        cfg.MODEL.DEVICE = device
    elif cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = _default_device()
    model = build_model(cfg)
    if trained:
        from .weights import ResNeXtCheckpointer

        ResNeXtCheckpointer(model).load_complete(cfg.MODEL.WEIGHTS, what=f"config {name}")
    return model
