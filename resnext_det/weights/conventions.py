"""The input conventions a set of weights was trained with, and setting the config to match.

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

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from detectron2.config import CfgNode

from ..config import load_config, load_yaml_tree

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

Triple = tuple[float, float, float]

# Conventions field -> the config key that carries it.
CFG_KEYS = {
    "input_format": "INPUT.FORMAT",
    "pixel_mean": "MODEL.PIXEL_MEAN",
    "pixel_std": "MODEL.PIXEL_STD",
    "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
}

_RGB_MEAN: Triple = (123.675, 116.28, 103.53)
_RGB_STD: Triple = (58.395, 57.12, 57.375)
# Caffe2/Detectron take BGR: the same statistics in BGR order.
_BGR_MEAN: Triple = (103.53, 116.28, 123.675)
_BGR_STD: Triple = (57.375, 57.12, 58.395)
_UNIT_STD: Triple = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Conventions:
    """How images must be prepared for a set of weights; ``None`` where the file cannot tell.

    Attributes:
        input_format: ``INPUT.FORMAT`` ("RGB" or "BGR").
        pixel_mean / pixel_std: ``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``, 0-255 pixel units, in
            the order of ``input_format``.
        stride_in_1x1: ``MODEL.RESNETS.STRIDE_IN_1X1`` (True only for MSRA's original ResNets).
        source: what the weights were judged to be, and from what.
        undecided: why some fields are ``None``.
        must_pin: the undecided fields must be pinned in the config (a guess could be silently
            wrong); False where the config's own values are the best source (detectron2
            checkpoints trained with that config).
    """

    input_format: str | None = None
    pixel_mean: Triple | None = None
    pixel_std: Triple | None = None
    stride_in_1x1: bool | None = None
    source: str = ""
    undecided: str | None = None
    must_pin: bool = False

    def cfg_values(self) -> dict[str, Any]:
        """The known values as ``{"INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [...], ...}``."""
        out = {}
        for field, key in CFG_KEYS.items():
            value = getattr(self, field)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (what exports and converted files store beside the tensors)."""
        out = {f: getattr(self, f) for f in CFG_KEYS}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        out["source"] = self.source
        return out


PRESETS: dict[str, Conventions] = {
    "torchvision": Conventions(
        "RGB",
        _RGB_MEAN,
        _RGB_STD,
        False,
        source="torchvision/timm ImageNet weights (RGB, ImageNet mean/std, stride in the 3x3)",
    ),
    "msra": Conventions(
        "BGR",
        _BGR_MEAN,
        _UNIT_STD,
        True,
        source="MSRA's original ResNet (Detectron's MSRA/R-*.pkl: BGR, PIXEL_STD 1, stride in "
        "the 1x1)",
    ),
    "fb-resnext": Conventions(
        "BGR",
        _BGR_MEAN,
        _UNIT_STD,
        False,
        source="Detectron's Caffe2 ResNeXt with BN fused into scale/bias (20171220/X-101-32x8d, "
        "FBResNeXt/X-101-64x4d, X-152-32x8d-IN5k: BGR, PIXEL_STD 1, stride in the 3x3)",
    ),
    "fair-reconverted": Conventions(
        "BGR",
        _BGR_MEAN,
        _BGR_STD,
        False,
        source="a Caffe2 ResNeXt with BN statistics, as detectron2's re-converted "
        "FAIR/X-101-32x8d.pkl (BGR, PIXEL_STD (57.375, 57.12, 58.395), stride in the 3x3)",
    ),
    "fair-gn": Conventions(
        "BGR",
        _BGR_MEAN,
        _UNIT_STD,
        False,
        source="FAIR's GroupNorm ResNets (R-50-GN, R-101-GN: BGR, PIXEL_STD 1, stride in the 3x3)",
    ),
}


def caffe2_conventions(
    *, fused: bool, group_norm: bool, cardinality: int, author: str | None
) -> Conventions:
    """Decide a Caffe2 file's conventions from what its content shows.

    Args:
        fused: its BN comes only as scale ``_bn_s`` and bias ``_bn_b`` (Detectron's own files).
        group_norm: its norms are ``_gn_s``/``_gn_b``.
        cardinality: C inferred from the shapes (1 for a ResNet).
        author: the file's ``__author__``, if any.
    """
    how = f"(BN {'fused into scale/bias' if fused else 'with running statistics'}, C={cardinality}"
    how += f", __author__={author!r})" if author else ")"
    if group_norm:
        preset = PRESETS["fair-gn"]
    elif fused:
        preset = PRESETS["msra"] if cardinality == 1 else PRESETS["fb-resnext"]
    elif cardinality > 1:
        preset = PRESETS["fair-reconverted"]
    elif author is not None and author.upper() == "MSRA":
        preset = PRESETS["msra"]
    else:
        # A plain ResNet whose BN statistics were kept: MSRA's re-converted files and torch ResNets
        # renamed into Caffe2 blobs look the same; their std and stride differ.
        return Conventions(
            "BGR",
            _BGR_MEAN,
            None,
            None,
            source=f"a Caffe2-layout ResNet {how}",
            undecided="a Caffe2 ResNet with BN statistics and no __author__ may be MSRA's "
            "(PIXEL_STD [1, 1, 1], STRIDE_IN_1X1 True) or a converted torch model (PIXEL_STD "
            "[57.375, 57.12, 58.395], STRIDE_IN_1X1 False)",
            must_pin=True,
        )
    return dataclasses.replace(preset, source=f"{preset.source} {how}")


def _triple(value: Any, scale: float = 1.0) -> Triple:
    values = tuple(float(v) * scale for v in value)
    if len(values) != 3:
        raise ValueError(f"expected 3 per-channel values; got {list(value)}")
    return values  # type: ignore[return-value]


def conventions_from_metadata(meta: Mapping[str, Any], source: str) -> Conventions | None:
    """Read conventions recorded beside weights, or None when there are none.

    Accepts the record :meth:`Conventions.to_dict` writes (optionally under ``"conventions"``),
    the config keys themselves (``"INPUT.FORMAT"``, ``"MODEL.PIXEL_MEAN"``, ...), timm's
    ``pretrained_cfg`` (``mean``/``std`` in 0-1 units, RGB), and detectron2's
    ``convert-torchvision-to-d2.py`` marker ``__author__: "torchvision"``.
    """
    record = meta.get("conventions", meta)
    if not isinstance(record, Mapping):
        return None
    fields: dict[str, Any] = {}
    for field, key in CFG_KEYS.items():
        for name in (field, key, key.lower()):
            if name in record:
                fields[field] = record[name]
                break
    if "pixel_mean" not in fields and "mean" in record and "std" in record:
        # timm's pretrained_cfg: 0-1 units, RGB
        fields = {
            "input_format": "RGB",
            "pixel_mean": _triple(record["mean"], 255.0),
            "pixel_std": _triple(record["std"], 255.0),
            **fields,
        }
    if not fields:
        author = meta.get("__author__")
        if isinstance(author, str) and author.lower() in ("torchvision", "timm"):
            preset = PRESETS["torchvision"]
            return dataclasses.replace(preset, source=f"{preset.source}, from {source}")
        return None
    for field in ("pixel_mean", "pixel_std"):
        if field in fields:
            fields[field] = _triple(fields[field])
    if "input_format" in fields:
        fields["input_format"] = str(fields["input_format"]).upper()
    if "stride_in_1x1" in fields:
        fields["stride_in_1x1"] = bool(fields["stride_in_1x1"])
    missing = [CFG_KEYS[f] for f in CFG_KEYS if f not in fields]
    return Conventions(
        **fields,
        source=str(record.get("source") or f"conventions recorded in {source}"),
        undecided=f"{source} does not record {missing}" if missing else None,
        must_pin=False,
    )


def _get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


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
    from .loader import read_weights

    path = os.fspath(path) if path else cfg.MODEL.WEIGHTS
    if not path:
        return {}
    weights = read_weights(path)
    conv = weights.conventions
    if pinned is None:
        defaults = _default_cfg()
        pinned = {k for k in CFG_KEYS.values() if not _same(_get(cfg, k), _get(defaults, k))}
    pinned = set(pinned)

    _check_architecture(cfg, weights)

    needed = conv.cfg_values()
    for key, value in needed.items():
        given = _get(cfg, key)
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
            given = _get(cfg, key)
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
            {k: _get(cfg, k) for k in undecided},
        )
    return changes


def _check_architecture(cfg: CfgNode, weights: Any) -> None:
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
