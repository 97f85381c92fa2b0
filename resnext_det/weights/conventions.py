"""Setting a config's input conventions and architecture to what a weights file needs.

The records themselves (:class:`Conventions`, :data:`PRESETS`, how a file's metadata is parsed)
are pure and live in :mod:`~resnext_det.weights.records`; they are re-exported here.

Weights are loaded as they are (the first conv's input channels are never flipped): the input
format, pixel statistics and the place of the stride belong to the weights, and the config follows
them. torchvision's ``Weights`` enums and timm's ``pretrained_cfg`` keep the same record beside
their tensors; here it is inferred from a file's content (its layout, keys, shapes, ``__author__``
or recorded metadata), never from its name.

Which config values the user set on purpose ("pinned") decides between adapting a value and
refusing: :func:`configure_for_weights` changes a value that was left at its default and stops on a
pinned one that disagrees. Pass ``pinned=explicit_keys(args.config_file, args.opts)`` (what
``tools/train_net.py`` does) to say exactly which keys the yaml chain and the command line set;
without it, a key counts as pinned when its value differs from detectron2's default (a value set
explicitly to the default cannot be told apart from an unset one that way).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from detectron2.config import CfgNode

from ..config import config_value, load_config, load_yaml_tree
from .reader import Weights, read_weights
from .records import (
    CFG_KEYS,
    PRESETS,
    Conventions,
    caffe2_conventions,
    conventions_from_metadata,
)

__all__ = [
    "CFG_KEYS",
    "PRESETS",
    "Conventions",
    "caffe2_conventions",
    "configure_for_weights",
    "conventions_from_metadata",
    "explicit_keys",
]

logger = logging.getLogger(__name__)


def _set(cfg: CfgNode, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(abs(float(x) - float(y)) <= 1e-4 for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str):
        return a.upper() == b.upper()
    return a == b


def _default_cfg() -> CfgNode:
    return load_config()


def explicit_keys(
    config_file: str | None = None,
    opts: Iterable[str] | None = None,
    *,
    allow_unsafe_yaml: bool = False,
) -> set[str]:
    """The config keys a yaml file (with its ``_BASE_`` chain) and command-line opts set.

    Args:
        config_file: the ``--config-file`` path, or None.
        opts: detectron2's trailing ``KEY VALUE`` list (``args.opts``).

    Returns:
        dotted keys such as ``{"MODEL.PIXEL_STD", "INPUT.FORMAT"}``: the ones
        :func:`configure_for_weights` must not change.
    """
    keys: set[str] = set()
    if config_file:
        tree = load_yaml_tree(config_file, allow_unsafe_yaml=allow_unsafe_yaml)

        def walk(node: Mapping[str, Any], prefix: str) -> None:
            for k, v in node.items():
                if isinstance(v, Mapping):
                    walk(v, f"{prefix}{k}.")
                else:
                    keys.add(f"{prefix}{k}")

        walk(tree, "")
    opts = list(opts or [])
    keys.update(str(k) for k in opts[0::2])
    return keys


def configure_for_weights(
    cfg: CfgNode,
    path: str | os.PathLike | None = None,
    *,
    pinned: Iterable[str] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """Set ``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD`` and ``MODEL.RESNETS.STRIDE_IN_1X1`` to what
    the weights in ``path`` need, and check the architecture.

    Args:
        cfg: the config (changed in place; a frozen cfg is thawed and frozen again).
        path: the weights; default ``cfg.MODEL.WEIGHTS`` (nothing to do when empty).
        pinned: dotted keys the user set explicitly (see :func:`explicit_keys`); None: keys whose
            value differs from detectron2's defaults.

    Returns:
        ``{key: (old, new)}`` for every value changed (also logged); empty when the config
        already matches.

    Raises:
        ValueError: a pinned key conflicts with the weights (names the key, the value given and
            the value needed); the file cannot decide a value and it is not pinned (names the
            keys to pin); ``MODEL.RESNETS`` describes another architecture than the file holds.
    """
    path = os.fspath(path) if path else cfg.MODEL.WEIGHTS
    if not path:
        return {}
    weights = read_weights(path)
    conv = weights.conventions
    if pinned is None:
        defaults = _default_cfg()
        pinned = {
            k
            for k in CFG_KEYS.values()
            if not _same(config_value(cfg, k), config_value(defaults, k))
        }
    pinned = set(pinned)

    _check_architecture(cfg, weights)

    needed = conv.cfg_values()
    for key, value in needed.items():
        given = config_value(cfg, key)
        if key in pinned and not _same(given, value):
            raise ValueError(
                f"{key} is set to {given!r}, but the weights in '{path}' need {value!r}: they "
                f"are {conv.source}. Remove {key} from the config/command line (it will be set "
                f"from the weights) or set it to {value!r}."
            )
    undecided = [k for k in CFG_KEYS.values() if k not in needed]
    if undecided and conv.must_pin:
        unpinned = [k for k in undecided if k not in pinned]
        if unpinned:
            raise ValueError(
                f"cannot tell {unpinned} from the content of '{path}': {conv.undecided}. Set "
                f"{' and '.join(unpinned)} explicitly in the config or on the command line to "
                f"the values the weights were trained with."
            )
    changes: dict[str, tuple[Any, Any]] = {}
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    try:
        for key, value in needed.items():
            given = config_value(cfg, key)
            if not _same(given, value):
                _set(cfg, key, value)
                changes[key] = (given, value)
    finally:
        if was_frozen:
            cfg.freeze()
    for key, (old, new) in changes.items():
        logger.info("configure_for_weights: %s %r -> %r (weights: %s)", key, old, new, conv.source)
    if not changes:
        logger.info("configure_for_weights: config already matches '%s' (%s)", path, conv.source)
    if undecided and not conv.must_pin:
        logger.warning(
            "configure_for_weights: '%s' does not record %s (%s); keeping the config's values %s",
            path,
            undecided,
            conv.undecided or conv.source,
            {k: config_value(cfg, k) for k in undecided},
        )
    return changes


def _check_architecture(cfg: CfgNode, weights: Weights) -> None:
    from ..backbone import ResNeXtSpec

    arch = weights.architecture
    if arch is None:
        return
    spec = ResNeXtSpec.from_config(cfg)
    file_values = {
        "MODEL.RESNETS.DEPTH": arch.depth,
        "MODEL.RESNETS.NUM_GROUPS": arch.cardinality,
        "MODEL.RESNETS.WIDTH_PER_GROUP": arch.width_per_group,
        "MODEL.RESNETS.STEM_OUT_CHANNELS": arch.stem_out_channels,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": arch.res2_out_channels,
    }
    cfg_values = {
        "MODEL.RESNETS.DEPTH": spec.depth,
        "MODEL.RESNETS.NUM_GROUPS": spec.cardinality,
        "MODEL.RESNETS.WIDTH_PER_GROUP": spec.width_per_group,
        "MODEL.RESNETS.STEM_OUT_CHANNELS": spec.stem_out_channels,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": spec.res2_out_channels,
    }
    wrong = {k: (cfg_values[k], v) for k, v in file_values.items() if cfg_values[k] != v}
    if wrong:
        details = ", ".join(
            f"{k} is {given} but the file has {have}" for k, (given, have) in wrong.items()
        )
        raise ValueError(
            f"'{weights.path}' holds a {arch.name} backbone but the config builds {spec.name}: "
            f"{details}"
        )
