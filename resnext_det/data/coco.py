"""The one validator of COCO-format detection ground truth, for training and for evaluation.

detectron2's ``load_coco_json`` checks with ``assert`` (stripped by ``python -O``) and fails
deep inside training with a bare ``KeyError``; pycocotools silently skips what it cannot use.
:func:`validate_coco_dict` checks a json once, names the file, the record and the field of any
problem, and is used both by registration (:mod:`resnext_det.data.catalog`) and by the
evaluator's ground-truth reader (``resnext_det.evaluation.coco.load_ground_truth``), so the two
accept and refuse the same files.

Validation policy (``AnnotationError``, a :class:`~resnext_det.errors.BadFileError`, unless
stated):

=====================================================  =========================================
Problem                                                What happens
=====================================================  =========================================
not UTF-8; not json; nested deeper than Python's json   error naming the file (line and column
reader allows; an integer of more than 4300 digits     where known)
not an object / missing or non-list                    error naming the file and the key
``images``, ``annotations``, ``categories``
no categories                                          error
category without int ``id`` or str ``name``;           error naming the category index and field
duplicate category id or name
image without int ``id``, str ``file_name``,           error naming the image index and field
positive int ``width``/``height``; duplicate image id  (integers must fit in 64 bits)
annotation without int ``id``; duplicate id            error naming the annotation index and id
``image_id``/``category_id`` not in the file           error naming the annotation id and field
``bbox`` not 4 finite numbers, or negative width       error naming the annotation id and bbox
or height
``iscrowd`` not 0/1 (``"yes"``, ``true``);             error naming the annotation id
``ignore`` non-zero (detectron2 does not support it;
allowed ``for_evaluation``, where COCOeval overrides
it with ``iscrowd``); malformed ``segmentation``
(polygons or RLE) or ``keypoints``
zero-width/height box                                  counted warning (detectron2's mapper drops
                                                       empty boxes)
box partly outside its image                           counted warning (detectron2 clips boxes to
                                                       the image)
two images with the same ``file_name``                 counted warning
annotation without ``area``                            counted warning (detectron2 trains without
                                                       it); error ``for_evaluation`` (COCOeval's
                                                       area ranges read it)
``segmentation`` whose polygons all have < 3 points    counted warning (detectron2's loader drops
                                                       the whole instance, box included)
=====================================================  =========================================
"""

from __future__ import annotations

import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..reading import INT64, is_int
from ..reading import read_json_file as _read_json_file
from .errors import AnnotationError

__all__ = ["CocoSummary", "load_coco_json_checked", "read_json_file", "validate_coco_dict"]


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


def _is_number(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    if isinstance(v, numbers.Integral):
        return INT64[0] <= int(v) < INT64[1]  # math.isfinite(10**400) raises OverflowError
    return math.isfinite(v)


def _short(v: Any, limit: int = 80) -> str:
    try:
        s = repr(v)
    except RecursionError:
        return f"<a {type(v).__name__} nested too deeply to print>"
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return f"<an integer of {v.bit_length()} bits>" if isinstance(v, int) else "<unprintable>"
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _check_segmentation(segm: Any, where: str, warnings: Counter[str]) -> None:
    if segm is None or segm == []:
        return
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (
            isinstance(size, list) and len(size) == 2 and all(is_int(v) and v >= 0 for v in size)
        ):
            raise AnnotationError(
                f"{where}: RLE 'segmentation' needs 'size' [height, width] of two integers, got "
                f"{_short(size)}"
            )
        if not (
            isinstance(counts, str)
            or (isinstance(counts, list) and all(is_int(v) and v >= 0 for v in counts))
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


def _check_categories(cats: list, source: str) -> dict[int, str]:
    cat_names: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for i, cat in enumerate(cats):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, dict):
            raise AnnotationError(f"{where} must be an object, got {_short(cat)}")
        cid, name = cat.get("id"), cat.get("name")
        if not is_int(cid):
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
    return cat_names


def _check_images(images: list, source: str, warnings: Counter[str]) -> dict[int, tuple[int, int]]:
    img_size: dict[int, tuple[int, int]] = {}
    file_names: Counter[str] = Counter()
    for i, img in enumerate(images):
        where = f"{source}: images[{i}]"
        if not isinstance(img, dict):
            raise AnnotationError(f"{where} must be an object, got {_short(img)}")
        iid = img.get("id")
        if not is_int(iid):
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
            if not is_int(v) or v <= 0:
                raise AnnotationError(
                    f"{where}: {key!r} must be a positive integer, got {_short(v)}"
                )
        img_size[iid] = (img["width"], img["height"])
        file_names[fname] += 1
    warnings["duplicate_file_names"] = sum(n - 1 for n in file_names.values() if n > 1)
    return img_size


def _check_annotation(
    ann: Any,
    i: int,
    source: str,
    img_size: dict[int, tuple[int, int]],
    cat_names: dict[int, str],
    warnings: Counter[str],
    for_evaluation: bool,
) -> int:
    """Check ``annotations[i]``; return its id."""
    where = f"{source}: annotations[{i}]"
    if not isinstance(ann, dict):
        raise AnnotationError(f"{where} must be an object, got {_short(ann)}")
    aid = ann.get("id")
    if not is_int(aid):
        raise AnnotationError(f"{where}: 'id' must be an integer, got {_short(aid)}")
    where = f"{source}: annotation id {aid} (annotations[{i}])"
    iid = ann.get("image_id")
    if not is_int(iid) or iid not in img_size:
        raise AnnotationError(
            f"{where}: 'image_id' {_short(iid)} is not the id of an image in 'images'"
        )
    cid = ann.get("category_id")
    if not is_int(cid) or cid not in cat_names:
        raise AnnotationError(
            f"{where}: 'category_id' {_short(cid)} is not in 'categories' "
            f"(ids {sorted(cat_names)[:20]})"
        )
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_is_number, bbox)):
        raise AnnotationError(
            f"{where}: 'bbox' must be [x, y, width, height] of 4 finite numbers, got {_short(bbox)}"
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
    if isinstance(crowd, bool) or not _is_number(crowd) or crowd not in (0, 1):
        raise AnnotationError(f"{where}: 'iscrowd' must be 0 or 1, got {_short(crowd)}")
    ignore = ann.get("ignore", 0)
    if not for_evaluation and ignore != 0:
        raise AnnotationError(
            f"{where}: 'ignore' is {_short(ignore)}; detectron2 does not support "
            "'ignore' annotations: drop them, or mark them 'iscrowd': 1"
        )
    if "area" not in ann:
        if for_evaluation:
            raise AnnotationError(
                f"{source}: annotations[{i}]: 'area' must be a number (COCOeval's area ranges "
                f"read it), got none (annotation id {aid})"
            )
        # detectron2 trains without it, but COCOeval reads it for the small/medium/large split.
        warnings["missing_area"] += 1
    elif not _is_number(ann["area"]) or ann["area"] < 0:
        raise AnnotationError(f"{where}: 'area' must be a number >= 0, got {_short(ann['area'])}")
    _check_segmentation(ann.get("segmentation"), where, warnings)
    keypoints = ann.get("keypoints")
    if keypoints and (
        not isinstance(keypoints, list) or len(keypoints) % 3 or not all(map(_is_number, keypoints))
    ):
        raise AnnotationError(
            f"{where}: 'keypoints' must be a list of numbers [x1, y1, v1, ...], got "
            f"{_short(keypoints)}"
        )
    return aid


def validate_coco_dict(
    data: Any, source: str = "<dict>", *, for_evaluation: bool = False
) -> CocoSummary:
    """Check that ``data`` is a COCO instances annotation dict detectron2 can load (or, with
    ``for_evaluation``, that COCOeval can score against).

    Args:
        data: the parsed json.
        source: the file name, used in every error message.
        for_evaluation: the evaluator's rules instead of training's: ``ignore`` is allowed
            (COCOeval overrides it with ``iscrowd``) and ``area`` is required.

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
                f"{source}: not a COCO annotation file: missing key {key!r} (COCO needs a list "
                f"under {key!r}; found keys {sorted(map(str, data))[:10]})"
            )
        if not isinstance(data[key], list):
            raise AnnotationError(
                f"{source}: {key!r} must be a list, got {type(data[key]).__name__}"
            )
    warnings: Counter[str] = Counter()
    cat_names = _check_categories(data["categories"], source)
    img_size = _check_images(data["images"], source, warnings)
    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        aid = _check_annotation(ann, i, source, img_size, cat_names, warnings, for_evaluation)
        if aid in ann_ids:
            raise AnnotationError(
                f"{source}: annotation id {aid} (annotations[{i}]): duplicate annotation id {aid}"
            )
        ann_ids.add(aid)
    cat_ids = sorted(cat_names)
    return CocoSummary(
        source=source,
        num_images=len(img_size),
        num_annotations=len(ann_ids),
        thing_classes=[cat_names[c] for c in cat_ids],
        category_ids=cat_ids,
        warnings={k: v for k, v in sorted(warnings.items()) if v},
    )


def read_json_file(
    path: str | os.PathLike,
    what: str = "COCO annotation file",
    *,
    error: type[Exception] = AnnotationError,
) -> Any:
    """:func:`resnext_det.reading.read_json_file` for annotation files (``AnnotationError``)."""
    return _read_json_file(path, what, error=error)


def load_coco_json_checked(
    json_file: str | os.PathLike, *, for_evaluation: bool = False
) -> tuple[dict, CocoSummary]:
    """Read and validate a COCO json file.

    Args:
        json_file: the file.
        for_evaluation: see :func:`validate_coco_dict`.

    Returns:
        (the parsed dict, its :class:`CocoSummary`).

    Raises:
        FileNotFoundError: no such file.
        AnnotationError: not UTF-8 json (with line and column), or not valid COCO.
    """
    data = read_json_file(json_file)
    summary = validate_coco_dict(data, str(json_file), for_evaluation=for_evaluation)
    return data, summary
