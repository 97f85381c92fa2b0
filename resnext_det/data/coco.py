"""Checked loading and registration of COCO-format detection data sets.

detectron2's ``register_coco_instances`` is lazy: a bad json surfaces at the first
``DatasetCatalog.get``, deep inside training, as a bare ``KeyError``/``AssertionError`` from
``load_coco_json`` (or, with ``python -O``, not at all). :func:`register_coco_dataset` reads and
validates the json first, names the file, the record and the field of any problem, and only then
registers through detectron2's own ``register_coco_instances`` (so loading, category-id mapping and
evaluation are detectron2's).

Validation policy (``AnnotationError``, a ``ValueError``, unless stated):

=====================================================  =========================================
Problem                                                What happens
=====================================================  =========================================
not json / not an object / missing or non-list         error naming the file and the key
``images``, ``annotations``, ``categories``
no categories                                          error
category without int ``id`` or str ``name``;           error naming the category index and field
duplicate category id or name
image without int ``id``, str ``file_name``,           error naming the image index and field
positive int ``width``/``height``; duplicate image id
annotation without int ``id``; duplicate id            error naming the annotation index and id
``image_id``/``category_id`` not in the file           error naming the annotation id and field
``bbox`` not 4 finite numbers, or negative width       error naming the annotation id and bbox
or height
``iscrowd`` not 0/1; ``ignore`` non-zero (detectron2   error naming the annotation id
does not support it); malformed ``segmentation``
(polygons or RLE) or ``keypoints``
zero-width/height box                                  counted warning (detectron2's mapper drops
                                                       empty boxes)
box partly outside its image                           counted warning (detectron2 clips boxes to
                                                       the image)
two images with the same ``file_name``                 counted warning
annotation without ``area``                            counted warning (detectron2 trains without
                                                       it; COCO evaluation needs it)
``segmentation`` whose polygons all have < 3 points    counted warning (detectron2's loader drops
                                                       the whole instance, box included)
=====================================================  =========================================
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AnnotationError

logger = logging.getLogger(__name__)

__all__ = [
    "CocoSummary",
    "check_dataset_names",
    "get_dataset_dicts_checked",
    "load_coco_json_checked",
    "register_coco_dataset",
    "register_from_config",
    "validate_coco_dict",
]

# Names registered through register_coco_dataset -> their summary, for idempotent re-registration
# and for telling the user's names apart from detectron2's ~100 built-in ones in error messages.
_REGISTERED: dict[str, CocoSummary] = {}


@dataclass
class CocoSummary:
    """What a validated COCO json holds.

    Attributes:
        source: the json file (or a description of where the dict came from).
        num_images, num_annotations: counts.
        thing_classes: category names in the order of detectron2's contiguous ids (sorted by id).
        category_ids: the json's category ids, sorted (contiguous id i <- category_ids[i]).
        warnings: counts of tolerated problems (see the module docstring).
        name, image_root: set when the file was registered.
    """

    source: str
    num_images: int
    num_annotations: int
    thing_classes: list[str]
    category_ids: list[int]
    warnings: dict[str, int] = field(default_factory=dict)
    name: str | None = None
    image_root: str | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _check_segmentation(segm: Any, where: str, warnings: Counter[str]) -> None:
    if segm is None or segm == []:
        return
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (
            isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)
        ):
            raise AnnotationError(
                f"{where}: RLE 'segmentation' needs 'size' [height, width] of two integers, got "
                f"{_short(size)}"
            )
        if not (
            isinstance(counts, str)
            or (isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts))
        ):
            raise AnnotationError(
                f"{where}: RLE 'segmentation' needs 'counts' as a string or a list of integers "
                f">= 0, got {_short(counts)}"
            )
        return
    if not isinstance(segm, list) or not all(
        isinstance(p, list) and all(map(_is_number, p)) for p in segm
    ):
        raise AnnotationError(
            f"{where}: 'segmentation' must be a list of polygons (lists of numbers) or an RLE dict "
            f"with 'counts' and 'size', got {_short(segm)}"
        )
    if not any(len(p) % 2 == 0 and len(p) >= 6 for p in segm):
        # detectron2's load_coco_json drops such an instance entirely, box included.
        warnings["dropped_by_detectron2_no_valid_polygon"] += 1


def validate_coco_dict(data: Any, source: str = "<dict>") -> CocoSummary:
    """Check that ``data`` is a COCO instances annotation dict detectron2 can load.

    Args:
        data: the parsed json.
        source: the file name, used in every error message.

    Returns:
        A :class:`CocoSummary`.

    Raises:
        AnnotationError: naming ``source``, the record and the field (see the module docstring).
    """
    if not isinstance(data, dict):
        raise AnnotationError(
            f"{source}: not a COCO annotation file: the top level is a {type(data).__name__}, "
            "expected an object with keys 'images', 'annotations', 'categories'"
        )
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnnotationError(
                f"{source}: not a COCO annotation file: missing key {key!r} "
                f"(found keys {sorted(map(str, data))[:10]})"
            )
        if not isinstance(data[key], list):
            raise AnnotationError(
                f"{source}: {key!r} must be a list, got {type(data[key]).__name__}"
            )
    warnings: Counter[str] = Counter()

    cat_names: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for i, cat in enumerate(data["categories"]):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, dict):
            raise AnnotationError(f"{where} must be an object, got {_short(cat)}")
        cid, name = cat.get("id"), cat.get("name")
        if not _is_int(cid):
            raise AnnotationError(f"{where}: 'id' must be an integer, got {_short(cid)}")
        if not isinstance(name, str) or not name:
            raise AnnotationError(
                f"{where} (id {cid}): 'name' must be a non-empty string, got {_short(name)}"
            )
        if cid in cat_names:
            raise AnnotationError(f"{where}: duplicate category id {cid}")
        if name in seen_names:
            # Two ids with one name make per-class results and the class list ambiguous.
            raise AnnotationError(
                f"{where}: duplicate category name {name!r} (ids {seen_names[name]} and {cid})"
            )
        cat_names[cid] = name
        seen_names[name] = cid
    if not cat_names:
        raise AnnotationError(f"{source}: 'categories' is empty; a detection set needs classes")

    img_size: dict[int, tuple[int, int]] = {}
    file_names: Counter[str] = Counter()
    for i, img in enumerate(data["images"]):
        where = f"{source}: images[{i}]"
        if not isinstance(img, dict):
            raise AnnotationError(f"{where} must be an object, got {_short(img)}")
        iid = img.get("id")
        if not _is_int(iid):
            raise AnnotationError(f"{where}: 'id' must be an integer, got {_short(iid)}")
        where = f"{where} (id {iid})"
        if iid in img_size:
            raise AnnotationError(f"{where}: duplicate image id {iid}")
        fname = img.get("file_name")
        if not isinstance(fname, str) or not fname:
            raise AnnotationError(
                f"{where}: 'file_name' must be a non-empty string, got {_short(fname)}"
            )
        for key in ("width", "height"):
            v = img.get(key)
            if not _is_int(v) or v <= 0:
                raise AnnotationError(
                    f"{where}: {key!r} must be a positive integer, got {_short(v)}"
                )
        img_size[iid] = (img["width"], img["height"])
        file_names[fname] += 1
    warnings["duplicate_file_names"] = sum(n - 1 for n in file_names.values() if n > 1)

    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise AnnotationError(f"{where} must be an object, got {_short(ann)}")
        aid = ann.get("id")
        if not _is_int(aid):
            raise AnnotationError(f"{where}: 'id' must be an integer, got {_short(aid)}")
        where = f"{source}: annotation id {aid} (annotations[{i}])"
        if aid in ann_ids:
            raise AnnotationError(f"{where}: duplicate annotation id {aid}")
        ann_ids.add(aid)
        iid = ann.get("image_id")
        if not _is_int(iid) or iid not in img_size:
            raise AnnotationError(
                f"{where}: 'image_id' {_short(iid)} is not the id of an image in 'images'"
            )
        cid = ann.get("category_id")
        if not _is_int(cid) or cid not in cat_names:
            raise AnnotationError(
                f"{where}: 'category_id' {_short(cid)} is not in 'categories' "
                f"(ids {sorted(cat_names)[:20]})"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
            raise AnnotationError(
                f"{where}: 'bbox' must be [x, y, width, height] of 4 finite numbers, got "
                f"{_short(bbox)}"
            )
        x, y, w, h = bbox
        if w < 0 or h < 0:
            raise AnnotationError(
                f"{where}: 'bbox' {bbox} has negative width or height; COCO boxes are "
                "[x, y, width, height] with width, height >= 0"
            )
        if w == 0 or h == 0:
            warnings["empty_boxes"] += 1
        W, H = img_size[iid]
        if x < 0 or y < 0 or x + w > W or y + h > H:
            warnings["boxes_outside_image"] += 1
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or isinstance(crowd, bool):
            raise AnnotationError(f"{where}: 'iscrowd' must be 0 or 1, got {_short(crowd)}")
        if ann.get("ignore", 0) != 0:
            raise AnnotationError(
                f"{where}: 'ignore' is {_short(ann['ignore'])}; detectron2 does not support "
                "'ignore' annotations: drop them, or mark them 'iscrowd': 1"
            )
        if "area" not in ann:
            # detectron2 trains without it, but COCOeval reads it for the small/medium/large split.
            warnings["missing_area"] += 1
        elif not _is_number(ann["area"]) or ann["area"] < 0:
            raise AnnotationError(
                f"{where}: 'area' must be a number >= 0, got {_short(ann['area'])}"
            )
        _check_segmentation(ann.get("segmentation"), where, warnings)
        keypoints = ann.get("keypoints")
        if keypoints and (
            not isinstance(keypoints, list)
            or len(keypoints) % 3
            or not all(map(_is_number, keypoints))
        ):
            raise AnnotationError(
                f"{where}: 'keypoints' must be a list of numbers [x1, y1, v1, ...], got "
                f"{_short(keypoints)}"
            )

    cat_ids = sorted(cat_names)
    return CocoSummary(
        source=source,
        num_images=len(img_size),
        num_annotations=len(ann_ids),
        thing_classes=[cat_names[c] for c in cat_ids],
        category_ids=cat_ids,
        warnings={k: v for k, v in sorted(warnings.items()) if v},
    )


def load_coco_json_checked(json_file: str | os.PathLike) -> tuple[dict, CocoSummary]:
    """Read and validate a COCO json file.

    Returns:
        (the parsed dict, its :class:`CocoSummary`).

    Raises:
        FileNotFoundError: no such file.
        AnnotationError: not json (with line and column), or not valid COCO.
    """
    path = Path(json_file)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}: not valid json (line {exc.lineno}, column {exc.colno}: {exc.msg}); a "
            "truncated or non-COCO file?"
        ) from exc
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({exc})") from exc
    return data, validate_coco_dict(data, str(path))


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
        AnnotationError: the json is not valid COCO (see the module docstring).
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
    others = sorted(n for n in names if n not in _REGISTERED)
    builtin_hint = ", ".join(o for o in others if o.startswith(("coco_2017", "voc_2007")))[:200]
    return (
        f"registered by resnext_det: {ours or 'none'}; plus {len(others)} other names "
        f"(detectron2's built-in ones such as {builtin_hint}, and any registered directly)"
    )


def check_dataset_names(names: Iterable[str], field_name: str = "dataset") -> None:
    """Raise a clear ``KeyError`` if a name in ``names`` is not in detectron2's DatasetCatalog.

    Args:
        names: e.g. ``cfg.DATASETS.TRAIN``.
        field_name: how to name the source in the message, e.g. ``"cfg.DATASETS.TRAIN"``.
    """
    from detectron2.data import DatasetCatalog

    registered = set(DatasetCatalog.list())
    for n in names:
        if n not in registered:
            raise KeyError(
                f"{field_name} names dataset {n!r}, which is not registered. Register it with "
                "cfg.DATASETS.COCO_REGISTER = [[name, json_file, image_root]] or "
                f"resnext_det.data.register_coco_dataset(...). {_describe_registered()}"
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
