"""Convert weights of any supported layout into a detectron2-ready file (``convert_weights``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .hub import resolve_name, resolve_weights_path
from .io import CheckpointError, save_checkpoint
from .reader import Weights, read_weights
from .records import PRESETS, Architecture, Conventions

__all__ = ["Conversion", "config_lines", "convert_checkpoint"]


@dataclass
class Conversion:
    """What :func:`convert_checkpoint` did.

    Attributes:
        weights: what was read from the source.
        out: the file written.
        written: how many tensors ``out`` holds.
        left_out: the source's tensors not written (a Caffe2 detector file's non-ResNet blobs).
        conventions: the conventions recorded in ``out``.
        yaml: the config lines to use with ``out``.
    """

    weights: Weights
    out: Path
    written: int
    conventions: Conventions
    yaml: str
    left_out: list[str] = field(default_factory=list)


def config_lines(path: str, conventions: Conventions, architecture: Architecture | None) -> str:
    """The yaml to go with converted weights: WEIGHTS, input conventions and architecture."""
    fmt = lambda v: "[" + ", ".join(f"{x:g}" for x in v) + "]"  # noqa: E731
    lines = ["MODEL:", f'  WEIGHTS: "{path}"']
    if conventions.pixel_mean is not None:
        lines.append(f"  PIXEL_MEAN: {fmt(conventions.pixel_mean)}")
    if conventions.pixel_std is not None:
        lines.append(f"  PIXEL_STD: {fmt(conventions.pixel_std)}")
    lines.append("  RESNETS:")
    if architecture is not None:
        depth = architecture.depth
        lines.append(
            f"    DEPTH: {depth}"
            if depth
            else f"    # DEPTH: blocks per stage {list(architecture.blocks)} match no depth"
        )
        lines.append(f"    NUM_GROUPS: {architecture.cardinality}")
        lines.append(f"    WIDTH_PER_GROUP: {architecture.width_per_group}")
        if architecture.stem_out_channels != 64:
            lines.append(f"    STEM_OUT_CHANNELS: {architecture.stem_out_channels}")
        if architecture.res2_out_channels not in (256, -1):
            lines.append(f"    RES2_OUT_CHANNELS: {architecture.res2_out_channels}")
    if conventions.stride_in_1x1 is not None:
        lines.append(f"    STRIDE_IN_1X1: {conventions.stride_in_1x1}")
    if conventions.input_format is not None:
        lines += ["INPUT:", f'  FORMAT: "{conventions.input_format}"']
    return "\n".join(lines)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file: the same resolved path (``../``, symlinks) or, for files
    that exist, the same inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def convert_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    preset: str | None = None,
) -> Conversion:
    """Write ``src`` (any supported layout, or a weights name) as a detectron2-ready file,
    atomically.

    The file is ``{"model": tensors, "__author__", "matching_heuristics": True, "resnext_det":
    {conventions, architecture, source}}``: ImageNet weights under bottom-up names (``stem.*``,
    ``res2.*``, ...), a detector's under its full names; grouped block layout. Stock detectron2
    loads it by suffix matching (``matching_heuristics``), the project's checkpointer exactly.
    A ``.pkl`` ``out`` holds numpy arrays (what detectron2 reads from ``.pkl``), a
    ``.safetensors`` one the tensors with the other entries as its metadata (read back with the
    same conventions and architecture), anything else is a ``torch.save`` file.

    Args:
        src: the weights to convert: a file, or a name/URL (``torchvision://resnet50``).
        out: where to write; never ``src`` itself (also through ``../``, a symlink or a hard
            link).
        format: the source layout, or "auto".
        preset: one of :data:`~resnext_det.weights.PRESETS` for weights whose conventions the
            content cannot decide (or to override what was inferred).

    Returns:
        a :class:`Conversion`: what was read, how many tensors were written, what was left out,
        and the config lines to go with ``out``.

    Raises:
        ValueError: ``out`` is ``src``; unknown preset; conventions the file cannot decide and no
            preset.
        CheckpointError: what :func:`~resnext_det.weights.read_weights` refuses, and a file that
            holds no ResNet (no stem with res2 blocks).
    """
    local = Path(resolve_weights_path(src))
    out = Path(out)
    if _same_file(out, local):
        raise ValueError(
            f"out ({out}) is the source file {local}: converting would replace the weights it "
            f"reads; write to another path"
        )
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    weights = read_weights(src, format)
    if weights.architecture is None:  # e.g. a Caffe2 pickle of a stem alone
        names = sorted(weights.mapping.values()) + sorted(weights.other)
        raise CheckpointError(
            f"'{weights.path}' ({weights.layout} layout) holds no ResNet/ResNeXt: no stem with "
            f"res2 blocks among its {len(names)} tensors (e.g. {names[:6]}); there is nothing to "
            f"convert"
        )
    conventions = weights.conventions
    if preset is not None:
        conventions = PRESETS[preset]
    elif conventions.must_pin:
        raise ValueError(
            f"cannot tell the input conventions of '{src}' from its content: "
            f"{conventions.undecided}. Pass a preset ({', '.join(PRESETS)}) to say which."
        )
    left_out: list[str] = []
    if weights.layout == "detectron2":
        tensors = {weights.mapping[k]: v for k, v in weights.resnet.items()} | weights.other
    else:
        tensors = dict(weights.resnet)
        left_out = sorted(weights.other)  # a Caffe2 detector's heads: no detectron2 names
    named = resolve_name(src)
    record = {
        "conventions": conventions.to_dict(),
        "architecture": weights.architecture.to_dict() if weights.architecture else None,
        "source": {
            "file": os.path.basename(weights.path),
            **({"name": named.name, "url": named.url} if named else {}),
            "layout": weights.layout,
            "container": weights.container,
            **({"left_out": left_out} if left_out else {}),
        },
    }
    save_checkpoint(
        {
            "model": tensors,
            "__author__": f"resnext_det convert_weights ({weights.layout})",
            "matching_heuristics": True,
            "resnext_det": record,
        },
        out,
    )
    yaml = config_lines(os.fspath(out), conventions, weights.architecture)
    return Conversion(weights, out, len(tensors), conventions, yaml, left_out)
