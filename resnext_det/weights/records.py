"""Pure records about weights: the input conventions they need, and the architecture they hold.

No file is read and no config is edited here (:mod:`~resnext_det.weights.loader` reads files,
:mod:`~resnext_det.weights.conventions` sets a config from them): these are the facts both use,
and what torchvision's ``Weights`` enums and timm's ``pretrained_cfg`` keep beside their tensors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _field
from typing import TYPE_CHECKING, Any

from ..spec import ARCHITECTURES, variant_name
from .io import CheckpointError

if TYPE_CHECKING:
    import torch

__all__ = [
    "BGR_MEAN",
    "BGR_STD",
    "CFG_KEYS",
    "PRESETS",
    "RGB_MEAN",
    "RGB_STD",
    "Architecture",
    "Conventions",
    "Converted",
    "caffe2_conventions",
    "conventions_from_metadata",
    "infer_architecture",
]

Triple = tuple[float, float, float]

# Conventions field -> the config key that carries it.
CFG_KEYS = {
    "input_format": "INPUT.FORMAT",
    "pixel_mean": "MODEL.PIXEL_MEAN",
    "pixel_std": "MODEL.PIXEL_STD",
    "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
}

RGB_MEAN: Triple = (123.675, 116.28, 103.53)
RGB_STD: Triple = (58.395, 57.12, 57.375)
# Caffe2/Detectron take BGR: the same statistics in BGR order.
BGR_MEAN: Triple = (103.53, 116.28, 123.675)
BGR_STD: Triple = (57.375, 57.12, 58.395)
UNIT_STD: Triple = (1.0, 1.0, 1.0)


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
        RGB_MEAN,
        RGB_STD,
        False,
        source="torchvision/timm ImageNet weights (RGB, ImageNet mean/std, stride in the 3x3)",
    ),
    "msra": Conventions(
        "BGR",
        BGR_MEAN,
        UNIT_STD,
        True,
        source="MSRA's original ResNet (Detectron's MSRA/R-*.pkl: BGR, PIXEL_STD 1, stride in "
        "the 1x1)",
    ),
    "fb-resnext": Conventions(
        "BGR",
        BGR_MEAN,
        UNIT_STD,
        False,
        source="Detectron's Caffe2 ResNeXt with BN fused into scale/bias (20171220/X-101-32x8d, "
        "FBResNeXt/X-101-64x4d, X-152-32x8d-IN5k: BGR, PIXEL_STD 1, stride in the 3x3)",
    ),
    "fair-reconverted": Conventions(
        "BGR",
        BGR_MEAN,
        BGR_STD,
        False,
        source="a Caffe2 ResNeXt with BN statistics, as detectron2's re-converted "
        "FAIR/X-101-32x8d.pkl (BGR, PIXEL_STD (57.375, 57.12, 58.395), stride in the 3x3)",
    ),
    "fair-gn": Conventions(
        "BGR",
        BGR_MEAN,
        UNIT_STD,
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
            BGR_MEAN,
            None,
            None,
            source=f"a Caffe2-layout ResNet {how}",
            undecided="a Caffe2 ResNet with BN statistics and no __author__ may be MSRA's "
            "(PIXEL_STD [1, 1, 1], STRIDE_IN_1X1 True) or a converted torch model (PIXEL_STD "
            "[57.375, 57.12, 58.395], STRIDE_IN_1X1 False)",
            must_pin=True,
        )
    return dataclasses.replace(preset, source=f"{preset.source} {how}")


_FORMATS = ("RGB", "BGR")


def _bad(source: str, key: str, value: Any, allowed: str) -> CheckpointError:
    return CheckpointError(f"{source}: {key} = {value!r} is not {allowed}")


def _parse_triple(value: Any, key: str, source: str, *, scale: float = 1.0) -> Triple:
    """Three finite numbers (a list, or the JSON text of one: safetensors metadata is text)."""
    allowed = "a list of 3 finite numbers (one per channel)"
    parsed = value
    if isinstance(parsed, str):
        try:
            parsed = json.loads(parsed)
        except ValueError:
            raise _bad(source, key, value, allowed) from None
    if (
        not isinstance(parsed, (list, tuple))
        or len(parsed) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in parsed)
        or not all(math.isfinite(v) for v in parsed)
    ):
        raise _bad(source, key, value, allowed)
    return tuple(float(v) * scale for v in parsed)  # type: ignore[return-value]


def _parse_bool(value: Any, key: str, source: str) -> bool:
    """``True``/``False``, or their text (``"False"`` is False, not ``bool("False")``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _bad(source, key, value, "a boolean (true or false)")


def _parse_format(value: Any, key: str, source: str) -> str:
    if isinstance(value, str) and value.strip().upper() in _FORMATS:
        return value.strip().upper()
    raise _bad(source, key, value, f"one of {', '.join(_FORMATS)}")


def conventions_from_metadata(meta: Mapping[str, Any], source: str) -> Conventions | None:
    """Read conventions recorded beside weights, or None when there are none.

    Accepts the record :meth:`Conventions.to_dict` writes (optionally under ``"conventions"``),
    the config keys themselves (``"INPUT.FORMAT"``, ``"MODEL.PIXEL_MEAN"``, ...), timm's
    ``pretrained_cfg`` (``mean``/``std`` in 0-1 units, RGB), and detectron2's
    ``convert-torchvision-to-d2.py`` marker ``__author__: "torchvision"``. Values are parsed
    strictly (safetensors metadata is text: ``"False"`` is False, ``"[1, 2, 3]"`` a list).

    Raises:
        CheckpointError: a recorded value that does not parse (names ``source``, the key, the
            value and what is allowed).
    """
    record = meta.get("conventions", meta)
    if not isinstance(record, Mapping):
        return None
    found: dict[str, tuple[str, Any]] = {}  # field -> (key as recorded, value)
    for field, key in CFG_KEYS.items():
        for name in (field, key, key.lower()):
            if name in record:
                found[field] = (name, record[name])
                break
    fields: dict[str, Any] = {}
    if "pixel_mean" not in found and "mean" in record and "std" in record:
        # timm's pretrained_cfg: 0-1 units, RGB
        fields = {
            "input_format": "RGB",
            "pixel_mean": _parse_triple(record["mean"], "mean", source, scale=255.0),
            "pixel_std": _parse_triple(record["std"], "std", source, scale=255.0),
        }
    if not found and not fields:
        author = meta.get("__author__")
        if isinstance(author, str) and author.lower() in ("torchvision", "timm"):
            preset = PRESETS["torchvision"]
            return dataclasses.replace(preset, source=f"{preset.source}, from {source}")
        return None
    for field, (name, value) in found.items():
        if field in ("pixel_mean", "pixel_std"):
            fields[field] = _parse_triple(value, name, source)
        elif field == "input_format":
            fields[field] = _parse_format(value, name, source)
        else:
            fields[field] = _parse_bool(value, name, source)
    if "pixel_std" in fields and any(v <= 0 for v in fields["pixel_std"]):
        raise _bad(source, found.get("pixel_std", ("std",))[0], list(fields["pixel_std"]),
                   "positive (the input is divided by it)")  # fmt: skip
    missing = [CFG_KEYS[f] for f in CFG_KEYS if f not in fields]
    return Conventions(
        **fields,
        source=str(record.get("source") or f"conventions recorded in {source}"),
        undecided=f"{source} does not record {missing}" if missing else None,
        must_pin=False,
    )


@dataclass(frozen=True)
class Architecture:
    """A ResNet/ResNeXt as inferred from a state_dict's shapes (for checks and error messages)."""

    blocks: tuple[int, ...]
    cardinality: int
    width_per_group: int
    stem_out_channels: int
    res2_out_channels: int

    @property
    def depth(self) -> int | None:
        """The depth whose blocks per stage these are, or None if none of ``ARCHITECTURES``."""
        return next((d for d, b in ARCHITECTURES.items() if b == self.blocks), None)

    @property
    def name(self) -> str:
        depth = self.depth or f"?(blocks {list(self.blocks)})"
        return variant_name(depth, self.cardinality, self.width_per_group, self.res2_out_channels)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "depth": self.depth, **dataclasses.asdict(self)}


# The tensors the architecture is read from, and the 4-D convolution weights they must be.
_ANCHORS = ("stem.conv1.weight", "res2.0.conv2.weight", "res2.0.conv3.weight")


def _model_shapes(architecture: Architecture) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of the grouped ResNet/ResNeXt ``architecture`` describes, from
    the backbone itself (built on the meta device: no memory, no initialisation); empty for an
    architecture the backbone does not build (another depth: the loader names it)."""
    import torch

    from ..backbone import make_resnext
    from ..spec import STAGE_NAMES, ResNeXtSpec

    if architecture.depth is None:
        return {}
    try:
        spec = ResNeXtSpec(
            depth=architecture.depth,
            cardinality=architecture.cardinality,
            width_per_group=architecture.width_per_group,
            stem_out_channels=architecture.stem_out_channels,
            res2_out_channels=architecture.res2_out_channels,
        )
    except ValueError:
        return {}
    with torch.device("meta"):
        model = make_resnext(spec, out_features=STAGE_NAMES)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_shapes(
    resnet: Mapping[str, Any], architecture: Architecture, where: str, mapping: Mapping[str, str]
) -> None:
    expected = _model_shapes(architecture)
    shapes = {k: tuple(v.shape) for k, v in resnet.items()}
    wrong = [
        (key, shapes[key], expected[key])
        for key in sorted(shapes)
        if key in expected and shapes[key] != expected[key]
    ]
    if wrong:
        key, got, want = wrong[0]
        named = f"'{mapping.get(key, key)}'" + (f" ({key})" if mapping.get(key, key) != key else "")
        more = f" (and {len(wrong) - 1} more tensor(s) of wrong shape)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{where}: {named} has shape {got}, but the {architecture.name} the other tensors "
            f"describe (stem {architecture.stem_out_channels}, C={architecture.cardinality}, "
            f"d={architecture.width_per_group}, res2 {architecture.res2_out_channels} channels) "
            f"needs {want}{more}: the file is damaged or edited, or not a plain ResNet/ResNeXt"
        )


def infer_architecture(
    resnet: Mapping[str, Any],
    *,
    where: str | None = None,
    mapping: Mapping[str, str] | None = None,
) -> Architecture | None:
    """Depth, C and d from a grouped bottom-up state_dict (``stem.*``, ``res2..5.*``); None if it
    has no res2.

    Args:
        resnet: the state_dict.
        where: the file, for messages: given, the shapes are checked (a file's, not a model's):
            the tensors the architecture is read from must be convolution weights, and every
            stem/stage tensor must have the shape that architecture gives it (bottleneck blocks;
            files of basic blocks, without ``conv3``, are left to the loader).
        mapping: name -> name in the file, for messages.

    Raises:
        CheckpointError: (only with ``where``) a tensor whose shape does not fit: names the key
            as the file has it, its shape and the expected one.
    """
    if "res2.0.conv2.weight" not in resnet or "stem.conv1.weight" not in resnet:
        return None
    if where is not None:
        for key in _ANCHORS:
            shape = tuple(resnet[key].shape) if key in resnet else None
            if shape is not None and (
                len(shape) != 4
                or 0 in shape
                or (key == "res2.0.conv2.weight" and shape[0] % shape[1] != 0)
            ):
                named = (mapping or {}).get(key, key)
                raise CheckpointError(
                    f"{where}: '{named}' has shape {shape}, which no ResNet/ResNeXt has: it must "
                    f"be a convolution's weight (out channels, in channels / groups, kh, kw)"
                )
    blocks = []
    for stage in range(2, 6):
        indices = {int(m[1]) for k in resnet if (m := re.match(rf"res{stage}\.(\d+)\.", k))}
        if not indices:
            break
        blocks.append(max(indices) + 1)
    conv2 = resnet["res2.0.conv2.weight"]  # (C*d, d, 3, 3): a grouped conv's weight
    conv3 = resnet.get("res2.0.conv3.weight")
    architecture = Architecture(
        blocks=tuple(blocks),
        cardinality=int(conv2.shape[0] // conv2.shape[1]),
        width_per_group=int(conv2.shape[1]),
        stem_out_channels=int(resnet["stem.conv1.weight"].shape[0]),
        res2_out_channels=int(conv3.shape[0]) if conv3 is not None else -1,
    )
    if where is not None and conv3 is not None:
        _check_shapes(resnet, architecture, where, mapping or {})
    return architecture


@dataclass
class Converted:
    """What every layout's converter returns: a file's tensors in detectron2's grouped layout.

    Attributes:
        resnet: the ResNet's tensors, names relative to the bottom-up network (``stem.*``,
            ``res2..5.*``, ``linear.*``).
        mapping: ResNet name -> name in the file.
        other: the file's other tensors (a detector's FPN and heads) under the file's names.
        file_prefix: where the ResNet sat in the file (``"backbone.bottom_up."``; ``""``).
    """

    resnet: dict[str, torch.Tensor]
    mapping: dict[str, str]
    other: dict[str, torch.Tensor] = _field(default_factory=dict)
    file_prefix: str = ""
