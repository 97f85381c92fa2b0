"""Registration of COCO-format data sets with detectron2, validated first.

detectron2's ``register_coco_instances`` is lazy: a bad json surfaces at the first
``DatasetCatalog.get``, deep inside training, as a bare ``KeyError``/``AssertionError`` from
``load_coco_json`` (or, with ``python -O``, not at all). :func:`register_coco_dataset` reads and
validates the json first (:func:`resnext_det.data.coco.validate_coco_dict`: the policy is there),
and only then registers through detectron2's own ``register_coco_instances`` (so loading,
category-id mapping and evaluation are detectron2's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ConfigError
from .coco import CocoSummary, load_coco_json_checked

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetNotRegisteredError",
    "check_dataset_names",
    "get_dataset_dicts_checked",
    "register_coco_dataset",
    "register_from_config",
]


class DatasetNotRegisteredError(ConfigError, KeyError):
    """A dataset name that is neither registered nor registered by the config's run."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# Names registered through register_coco_dataset -> their summary, for idempotent re-registration
# and for telling the user's names apart from detectron2's ~100 built-in ones in error messages.
_REGISTERED: dict[str, CocoSummary] = {}


def _same_path(a: Any, b: Any) -> bool:
    return a is not None and os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def register_coco_dataset(
    name: str,
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    check_image_files: bool = True,
) -> CocoSummary:
    """Validate a COCO json eagerly, then register it with detectron2's ``register_coco_instances``.

    Registering the same name again with the same files is a no-op; with other files it is an
    error (detectron2 itself would raise a bare ``AssertionError``).

    Args:
        name: the data set name for ``cfg.DATASETS.TRAIN``/``TEST``.
        json_file: COCO instances json.
        image_root: directory that the images' ``file_name`` are relative to.
        check_image_files: also check that every image file exists (one ``stat`` per image), so a
            wrong ``image_root`` fails here and not at the first training batch.

    Returns:
        The :class:`CocoSummary` (``thing_classes`` is what ``MODEL.ROI_HEADS.NUM_CLASSES``
        must match).

    Raises:
        FileNotFoundError: the json, the image root or an image is missing.
        AnnotationError: the json is not valid COCO (the policy: resnext_det.data.coco).
        ValueError: ``name`` is already registered with other files.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        old_json, old_root = meta.get("json_file"), meta.get("image_root")
        if _same_path(old_json, json_file) and _same_path(old_root, image_root):
            if name in _REGISTERED:
                return _REGISTERED[name]
            data, summary = load_coco_json_checked(json_file)
            summary.name, summary.image_root = name, image_root
            return summary
        raise ValueError(
            f"dataset {name!r} is already registered with json_file={old_json!r}, "
            f"image_root={old_root!r}; cannot register it again with json_file={json_file!r}, "
            f"image_root={image_root!r}. Use another name, or DatasetCatalog.remove({name!r}) "
            f"and MetadataCatalog.remove({name!r}) first."
        )

    data, summary = load_coco_json_checked(json_file)
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"image_root {image_root!r} of dataset {name!r} ({json_file}) is not a directory"
        )
    if check_image_files:
        missing = [
            img["file_name"]
            for img in data["images"]
            if not os.path.isfile(os.path.join(image_root, img["file_name"]))
        ]
        if missing:
            raise FileNotFoundError(
                f"{json_file}: {len(missing)} of {len(data['images'])} image files are not under "
                f"image_root {image_root!r}, e.g. {missing[:3]}"
            )
    for key, n in summary.warnings.items():
        logger.warning("%s: %d %s (see resnext_det.data.coco for the policy)", json_file, n, key)

    register_coco_instances(name, {}, json_file, image_root)
    # Set now what load_coco_json would set at the first DatasetCatalog.get (the same values, as it
    # computes them), so the trainer and evaluator can read the classes before loading.
    meta = MetadataCatalog.get(name)
    meta.thing_classes = list(summary.thing_classes)
    meta.thing_dataset_id_to_contiguous_id = {c: i for i, c in enumerate(summary.category_ids)}
    summary.name, summary.image_root = name, image_root
    _REGISTERED[name] = summary
    return summary


def _describe_registered() -> str:
    from detectron2.data import DatasetCatalog

    names = DatasetCatalog.list()
    ours = sorted(n for n in names if n in _REGISTERED)
    return (
        f"Registered by resnext_det: {ours or 'none'}, plus {len(names) - len(ours)} others "
        "(detectron2's built-in coco_*, voc_*, ...)"
    )


def check_dataset_names(
    names: Iterable[str], field_name: str = "dataset", *, registered_later: Iterable[str] = ()
) -> None:
    """Refuse a name in ``names`` that is not in detectron2's DatasetCatalog (nor among
    ``registered_later``: names a config registers when its run starts,
    ``DATASETS.COCO_REGISTER``), naming ``field_name``, the nearest known name and how to
    register one.

    Raises:
        DatasetNotRegisteredError: (a ``ConfigError`` and a ``KeyError``) the first unknown name.
    """
    import difflib

    from detectron2.data import DatasetCatalog

    known = set(DatasetCatalog.list()) | set(registered_later)
    for n in names:
        if isinstance(n, str) and n in known:
            continue
        near = difflib.get_close_matches(str(n), sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise DatasetNotRegisteredError(
            f"{field_name}: no dataset named {n!r} is registered{hint}; register a COCO-format "
            "set with --register NAME JSON IMAGE_ROOT (DATASETS.COCO_REGISTER; in code "
            f"register_coco_dataset). {_describe_registered()}"
        )


def get_dataset_dicts_checked(name: str) -> list[dict]:
    """``DatasetCatalog.get(name)`` with a clear error for an unknown name or an empty set."""
    from detectron2.data import DatasetCatalog

    check_dataset_names([name])
    dicts = DatasetCatalog.get(name)
    if not dicts:
        raise ValueError(f"dataset {name!r} has no images")
    return dicts


def register_from_config(cfg: Any) -> list[CocoSummary]:
    """Register every ``[name, json_file, image_root]`` of ``cfg.DATASETS.COCO_REGISTER``.

    Returns:
        One :class:`CocoSummary` per entry.
    """
    entries: Sequence[Any] = cfg.DATASETS.get("COCO_REGISTER", [])
    summaries = []
    for i, entry in enumerate(entries):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 3
            or not all(isinstance(e, str) and e for e in entry)
        ):
            raise ValueError(
                f"cfg.DATASETS.COCO_REGISTER[{i}] must be [name, json_file, image_root] (three "
                f"non-empty strings), got {entry!r}"
            )
        summaries.append(register_coco_dataset(*entry))
    return summaries
