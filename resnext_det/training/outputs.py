"""What a run may not write over: its OUTPUT_DIR against the files and folders the run reads.

A training or evaluation writes fixed names into ``OUTPUT_DIR`` (``config.yaml``, ``log.txt``,
``metrics.json``, ``last_checkpoint``, ``model_*.pth``, ``inference/``, ...). Before anything is
written, :func:`check_run_folder` refuses, in one line naming both paths:

* an ``OUTPUT_DIR`` that is a dataset's image folder (the run's files among the photos); a
  folder above or below it is fine (the annotation file lists what is read);
* a file the run reads that it would replace: the config (or a ``_BASE_`` of it) named
  ``OUTPUT_DIR/config.yaml`` unless it is an earlier run's own dump (the usual
  ``--config-file output/config.yaml --resume``), a dataset json under one of the run's names,
  and, when training, ``MODEL.WEIGHTS`` named like the checkpoints it saves
  (``OUTPUT_DIR/model_final.pth``: fine-tuning from it would replace it).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from pathlib import Path

import yaml
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from ..config import config_files, load_config
from ..errors import ResNeXtDetError
from ..io import OutputLocationError

__all__ = ["check_run_folder"]

# Names a run writes directly in OUTPUT_DIR (glob patterns); with "inference", what is below it.
_WRITTEN = ("config.yaml", "log.txt", "log.txt.rank*", "metrics.json", ".lock", "inference")
_WRITTEN_IN_TRAINING = ("last_checkpoint", "model_*.pth", "events.out.tfevents.*")


def _datasets(cfg: CfgNode, training: bool) -> list[tuple[str, str]]:
    """``(what, path)`` of every annotation file and image folder the run's datasets name:
    ``DATASETS.COCO_REGISTER`` (``--register``) and those already in detectron2's catalog."""
    what = {"json_file": "the annotation file", "image_root": "the image folder"}
    found = [
        (f"{what[key]} of dataset {entry[0]!r}", path)
        for entry in cfg.DATASETS.get("COCO_REGISTER", [])
        if isinstance(entry, (list, tuple)) and len(entry) == 3
        for key, path in zip(what, entry[1:])
        if isinstance(path, str) and path  # (a malformed entry is register_from_config's)
    ]
    names = [*_names(cfg.DATASETS.TRAIN if training else ()), *_names(cfg.DATASETS.TEST)]
    for name in names:
        meta = MetadataCatalog.get(name) if name in MetadataCatalog.list() else None
        for key in what:
            value = getattr(meta, key, None) if meta is not None else None
            if isinstance(value, str) and value:
                found.append((f"{what[key]} of dataset {name!r}", value))
    return found


def _names(value: str | Iterable[object]) -> list[str]:
    return [value] if isinstance(value, str) else [n for n in value if isinstance(n, str)]


def _is_earlier_dump(path: Path) -> bool:
    """Whether ``path`` is a config a run wrote: every key, no ``_BASE_``, no comment, as its own
    reload dumps it (re-dumping it loses nothing a person wrote)."""
    try:
        text = path.read_text(encoding="utf-8")
        if any(line.lstrip().startswith("#") for line in text.splitlines()):
            return False
        return yaml.safe_load(text) == yaml.safe_load(load_config(path).dump())
    except (
        OSError,
        ValueError,
        KeyError,
        yaml.YAMLError,
        ResNeXtDetError,
    ):  # not loadable: a person's file
        return False


def check_run_folder(cfg: CfgNode, config_file: str | None, *, training: bool) -> None:
    """Refuse ``cfg.OUTPUT_DIR`` where the run would write over or among what it reads; see the
    module docstring. Nothing is written.

    Args:
        cfg: the run's config.
        config_file: the yaml it was loaded from (None: built in code).
        training: a training run (it also writes checkpoints), not an evaluation.

    Raises:
        OutputLocationError: naming OUTPUT_DIR, the input, and what to do.
    """
    output_dir = cfg.OUTPUT_DIR
    if not output_dir or "://" in output_dir:
        return
    datasets = _datasets(cfg, training)
    out = Path(os.path.realpath(output_dir))
    for key, path in datasets:
        if Path(os.path.realpath(path)) == out:
            raise OutputLocationError(
                f"OUTPUT_DIR {output_dir!r} is {key} ({path}), which the run reads: its files "
                "would go among the dataset's; choose a folder of its own (a subfolder is fine)"
            )
    written = _WRITTEN + (_WRITTEN_IN_TRAINING if training else ())
    files = config_files(config_file) if config_file else []
    reads = [
        ("the config file" if i == 0 else "a _BASE_ of the config", p) for i, p in enumerate(files)
    ]
    reads += [(key, Path(path)) for key, path in datasets]
    weights = cfg.MODEL.WEIGHTS
    if training and weights and "://" not in weights:
        reads.append(("MODEL.WEIGHTS", Path(weights)))
    for label, path in reads:
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(out) or real == out:
            continue
        top = real.relative_to(out).parts[0]
        if not any(fnmatch.fnmatchcase(top, pattern) for pattern in written):
            continue
        if top == "config.yaml" and real == out / top and _is_earlier_dump(real):
            continue  # an earlier run's dump, re-dumped: --config-file output/config.yaml
        raise OutputLocationError(
            f"OUTPUT_DIR {output_dir!r}: this run writes {out / top}, which would replace "
            f"{label} {os.fspath(path)!r} that it reads; copy that file elsewhere or choose "
            "another OUTPUT_DIR"
        )
