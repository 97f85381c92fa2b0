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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import config_root

__all__ = ["config_root", "get", "get_config", "get_config_file", "list_configs"]

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


def get(name: str, *, device: str | None = None, opts: list[Any] | tuple[Any, ...] = ()):
    """The (untrained, or ``MODEL.WEIGHTS``-initialised by the caller) model of config ``name``,
    on ``device`` (default: the config's)."""
    cfg = get_config(name, opts)
    if name.endswith(".py"):
        from detectron2.config import instantiate

        return instantiate(cfg.model).to(device or str(cfg.train.device))
    from detectron2.modeling import build_model

    if device is not None:
        cfg.MODEL.DEVICE = device
    return build_model(cfg)
