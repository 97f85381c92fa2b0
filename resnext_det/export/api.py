"""``export_backbone``: the order of the steps (check the options, read, build, load, describe,
write atomically), each done by its own module of this package."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from ..blocks import to_grouped_state_dict
from ..config import config_files
from ..io import check_output_location, staged_files
from ..weights.io import SIDECAR_SHA256, sha256_of
from ..weights.loader import read_weights
from .formats import FORMATS, STATE_DICT_FORMATS, check_options
from .metadata import export_conventions, export_metadata, sidecar_path
from .source import (
    build_export_backbone,
    check_deformable_export,
    check_torchvision_compatible,
    load_checked,
    load_export_config,
)
from .state_dict import container_writer, state_dict_payload
from .traced import traced_writer

__all__ = ["ExportResult", "export_backbone"]

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What :func:`export_backbone` wrote: the export, its sidecar and the sidecar's content."""

    path: Path
    sidecar: Path
    metadata: dict[str, Any] = field(repr=False)

    def summary(self) -> str:
        """Lines to print: where the files are and what the export leaves out."""
        m = self.metadata
        lines = [
            f"wrote {m['format']} export of {m['architecture']['name']}"
            f"{' + FPN' if m['architecture']['fpn'] else ''} to {self.path}",
            f"metadata: {self.sidecar}",
            "not included:",
            *(f"  - {item}" for item in m["not_included"]),
        ]
        if m.get("verification"):
            v = m["verification"]
            lines.append(
                f"checked against the eager model on inputs {v['input_shapes']}: max relative "
                f"error {v['max_relative_error']:.2e} (tolerance {v['tolerance']:g})"
            )
        return "\n".join(lines)


def export_backbone(
    cfg: CfgNode | str | os.PathLike,
    weights: str | os.PathLike,
    format: str,
    out: str | os.PathLike,
    *,
    fpn: bool = False,
    fold_bn: bool = False,
    container: str | None = None,
    opts: Sequence[str] = (),
) -> ExportResult:
    """Export the backbone of the checkpoint ``weights`` in ``format`` to ``out`` (+ ``out.json``).

    Args:
        cfg: the config the checkpoint was trained with: a CfgNode (``add_resnext_config`` applied)
            or a yaml file path. It decides the architecture; the checkpoint must match it.
        weights: a detectron2 training checkpoint (``{"model": ..., "iteration": ...}``) of an FPN
            detector (``backbone.bottom_up.*``, ``backbone.fpn_*``) or a C4 detector
            (``backbone.*``, ``roi_heads.res5.*``), or a bare backbone state dict, in any block
            form and any container :func:`resnext_det.weights.read_weights` reads (torch,
            safetensors, pickle; torchvision/timm and Caffe2 layouts too).
        format: one of :data:`FORMATS`.
        out: the file to write; the sidecar goes to ``<out>.json``.
        fpn: include the FPN (``detectron2``: ``backbone.fpn_*`` keys; traced formats: p2..p6
            outputs). torchvision and timm have no FPN.
        fold_bn: fold the (frozen / eval) BatchNorms into the convolutions before tracing; traced
            formats only (a state dict without BatchNorm no longer loads into torchvision's model).
        container: ``torch`` or ``safetensors`` for the state-dict formats; None: ``safetensors``
            when ``out`` ends in ``.safetensors``, else ``torch``.
        opts: config overrides, ``["KEY", "VALUE", ...]``, applied after the yaml.

    Returns:
        an :class:`ExportResult`; ``result.summary()`` says what was written and what was left out.

    Raises:
        ValueError: an unknown format or option, an architecture the format cannot hold, or a
            checkpoint with no backbone or one that does not match the config (naming the key and
            both shapes). Nothing is written.
        FileNotFoundError: no such config or checkpoint.

    Example::

        >>> r = export_backbone("configs/X50.yaml", "output/model_final.pth", "onnx", "x50.onnx",
        ...                     fpn=True, fold_bn=True)
        >>> r.metadata["outputs"]["p2"], r.metadata["input"]["format"]
        ({'channels': 256, 'stride': 4}, 'BGR')
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    out = Path(out)
    container = check_options(format, out, fpn=fpn, fold_bn=fold_bn, container=container)
    cfg, config_file = load_export_config(cfg, opts)
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {weights} does not exist")
    # Neither the export nor its sidecar may land on what is read: the checkpoint, the sidecar
    # read_weights trusts, the config and its _BASE_ chain.
    inputs = [weights, sidecar_path(weights), *(config_files(config_file) if config_file else ())]
    check_output_location(out, inputs, what="out")
    check_output_location(sidecar_path(out), inputs, what="out's sidecar")
    # Any container and layout (detectron2 detector or backbone, torchvision/timm, Caffe2), read
    # without running code from the file; the ResNet comes back in the grouped layout.
    source = read_weights(weights)

    model, bottom_up = build_export_backbone(cfg, fpn=fpn)
    spec = bottom_up.spec
    check_deformable_export(bottom_up, format)
    if format in ("torchvision", "timm"):
        check_torchvision_compatible(spec, cfg, format)
    what = f"the config's {spec.name}{' FPN' if fpn else ''} backbone"
    load_checked(model, source, what)
    model.eval()
    grouped = to_grouped_state_dict(bottom_up.state_dict())
    conventions = export_conventions(cfg, spec, source)

    metadata = export_metadata(
        cfg=cfg,
        config_file=config_file,
        spec=spec,
        model=model,
        source=source,
        conventions=conventions,
        format=format,
        container=container,
        fpn=fpn,
        fold_bn=fold_bn,
    )
    if format in STATE_DICT_FORMATS:
        payload = state_dict_payload(format, grouped, model if fpn else None, cfg)
        writer = container_writer(container, format, payload, metadata)
    else:
        writer = traced_writer(format, model, fold_bn=fold_bn, metadata=metadata)

    with staged_files([out, sidecar_path(out)]) as (tmp_out, tmp_sidecar):
        writer(tmp_out)
        metadata[SIDECAR_SHA256] = sha256_of(tmp_out)  # read_weights trusts a sidecar that matches
        tmp_sidecar.write_text(json.dumps(metadata, indent=2, sort_keys=False) + "\n")
    result = ExportResult(path=out, sidecar=sidecar_path(out), metadata=metadata)
    logger.info("%s", result.summary())
    return result
