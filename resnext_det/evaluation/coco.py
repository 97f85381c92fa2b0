"""COCO box evaluation files: the ground truth and results readers, and COCO's constants.

The evaluation is split by job: this module reads and checks the files,
:mod:`~resnext_det.evaluation.matching` does COCOeval's per-image matching once,
:mod:`~resnext_det.evaluation.accumulate` holds the weighted accumulator the bootstrap needs, and
:mod:`~resnext_det.evaluation.metrics` turns an accumulation into COCOeval's 12 numbers.

Why not pycocotools' ``COCOeval.evaluate``/``evalImgs`` for the matching: a bootstrap over images
re-accumulates the same matching for every resample, so it needs the matching as flat arrays
(detection -> image, category, true positive / ignored per IoU threshold and area range).
``evalImgs`` is a list of one Python dict per (image, category, area range), built by a Python
loop over T x D x G per entry; converting it would cost more than matching here, vectorised over
detections of equal rank. faster-coco-eval's C++ per-image results are opaque to Python, so they
cannot be re-accumulated over resamples either. Both stay the reference the tests check against
(pycocotools to the bit, faster-coco-eval as a second opinion).

With every weight 1 the numbers equal pycocotools' ``COCOeval`` (bbox) exactly, quirks included:
``iscrowd`` decides a ground truth's ``ignore`` (a dataset's own ``ignore`` key is overwritten, as
pycocotools does), crowd regions use intersection over the detection's area, ties keep
pycocotools' merge-sort order, at most 100 detections per image and category count.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ..errors import BadFileError
from ..reading import is_int, read_json_file

__all__ = [
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "MAX_DETS",
    "METRIC_KEYS",
    "RECALL_THRESHOLDS",
    "SUMMARY",
    "CocoGroundTruth",
    "Detections",
    "ResultsFormatError",
    "load_ground_truth",
    "load_results",
]

logger = logging.getLogger(__name__)

# pycocotools' Params.setDetParams, to the bit: linspace, not arange (arange drifts).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0**2, 1e5**2),
    "small": (0**2, 32**2),
    "medium": (32**2, 96**2),
    "large": (96**2, 1e5**2),
}
# COCOeval.summarize's 12 numbers, in its order: (key, is_ap, iou threshold, area, max dets).
SUMMARY = (
    ("AP", True, None, "all", 100),
    ("AP50", True, 0.5, "all", 100),
    ("AP75", True, 0.75, "all", 100),
    ("APs", True, None, "small", 100),
    ("APm", True, None, "medium", 100),
    ("APl", True, None, "large", 100),
    ("AR1", False, None, "all", 1),
    ("AR10", False, None, "all", 10),
    ("AR100", False, None, "all", 100),
    ("ARs", False, None, "small", 100),
    ("ARm", False, None, "medium", 100),
    ("ARl", False, None, "large", 100),
)
METRIC_KEYS = tuple(s[0] for s in SUMMARY)

PathLike = Union[str, os.PathLike]


class ResultsFormatError(BadFileError):
    """A ground-truth or results file that cannot be evaluated; the message names the file, the
    entry and the field."""


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class CocoGroundTruth:
    """COCO-format ground truth as arrays, in the order pycocotools visits it.

    Annotations keep the file's order (pycocotools matches ties to the later one); one whose image
    or category is not listed is refused by :func:`load_ground_truth` (pycocotools drops it).
    """

    source: str
    image_ids: np.ndarray  # sorted, unique (COCOeval's p.imgIds)
    category_ids: np.ndarray  # sorted, unique (COCOeval's p.catIds)
    category_names: list[str]
    ann_image: np.ndarray  # index into image_ids
    ann_category: np.ndarray  # index into category_ids
    ann_bbox: np.ndarray  # [n, 4] x, y, w, h
    ann_area: np.ndarray  # the file's "area" (COCOeval's area ranges use it, not the box)
    ann_crowd: np.ndarray  # bool
    ann_id: np.ndarray
    images: list[dict] = field(repr=False, default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def subset(self, image_ids: Any) -> CocoGroundTruth:
        """The same ground truth restricted to ``image_ids`` (e.g. the images a run covered)."""
        keep_ids = np.unique(np.asarray(list(image_ids), dtype=np.int64))
        missing = np.setdiff1d(keep_ids, self.image_ids)
        if missing.size:
            raise ValueError(
                f"{self.source}: image ids {missing[:5].tolist()} are not in the ground truth"
            )
        keep_img = np.isin(self.image_ids, keep_ids)
        new_index = np.cumsum(keep_img) - 1
        keep_ann = keep_img[self.ann_image]
        id_set = set(keep_ids.tolist())
        return CocoGroundTruth(
            source=self.source,
            image_ids=self.image_ids[keep_img],
            category_ids=self.category_ids,
            category_names=self.category_names,
            ann_image=new_index[self.ann_image[keep_ann]],
            ann_category=self.ann_category[keep_ann],
            ann_bbox=self.ann_bbox[keep_ann],
            ann_area=self.ann_area[keep_ann],
            ann_crowd=self.ann_crowd[keep_ann],
            ann_id=self.ann_id[keep_ann],
            images=[im for im in self.images if im["id"] in id_set],
        )


def load_ground_truth(gt: PathLike | dict | CocoGroundTruth) -> CocoGroundTruth:
    """Read COCO-format ground truth (a path to the json or the loaded dict).

    The file is read and checked by the same validator as data set registration
    (:func:`resnext_det.data.validate_coco_dict`, with its evaluation rules: ``area`` required,
    ``ignore`` allowed), so evaluation accepts exactly the ground truth that training does.

    Args:
        gt: ``instances_*.json``-style file or dict (``images``, ``annotations``, ``categories``).

    Returns:
        A :class:`CocoGroundTruth`.

    Raises:
        FileNotFoundError: the file does not exist.
        ResultsFormatError: the file or dict is not valid COCO ground truth (file, record and
            field named).
    """
    from ..data import AnnotationError, read_json_file, validate_coco_dict

    if isinstance(gt, CocoGroundTruth):
        return gt
    try:
        if isinstance(gt, dict):
            source, data = "<ground-truth dict>", gt
        else:
            source = str(gt)
            data = read_json_file(gt, "ground-truth annotations file")
        validate_coco_dict(data, source, for_evaluation=True)
    except AnnotationError as exc:
        raise ResultsFormatError(str(exc)) from None
    images = data["images"]
    image_ids = np.array(sorted(im["id"] for im in images), dtype=np.int64)
    cat_by_id = {int(c["id"]): c["name"] for c in data["categories"]}
    category_ids = np.array(sorted(cat_by_id), dtype=np.int64)
    rows = [
        (a["image_id"], a["category_id"], *a["bbox"], a["area"], a.get("iscrowd", 0), a["id"])
        for a in data["annotations"]
    ]
    arr = np.array(rows, dtype=np.float64).reshape(-1, 9)
    ann_id = np.array([r[8] for r in rows], dtype=np.int64)
    if np.any(ann_id == 0):
        # pycocotools records a match by the ground truth's id and treats id 0 as "unmatched", so a
        # detection matched to annotation 0 counts as a false positive. We reproduce the numbers.
        logger.warning(
            "%s: an annotation has id 0; pycocotools (and therefore this evaluator) counts a "
            "detection matched to it as a false positive. Renumber annotations from 1.",
            source,
        )
    return CocoGroundTruth(
        source=source,
        image_ids=image_ids,
        category_ids=category_ids,
        category_names=[cat_by_id[int(c)] for c in category_ids],
        ann_image=np.searchsorted(image_ids, arr[:, 0].astype(np.int64)),
        ann_category=np.searchsorted(category_ids, arr[:, 1].astype(np.int64)),
        ann_bbox=arr[:, 2:6].copy(),
        ann_area=arr[:, 6].copy(),
        ann_crowd=arr[:, 7] != 0,
        ann_id=ann_id,
        images=[dict(im) for im in images],
    )


@dataclass
class Detections:
    """A results file as arrays, in file order (pycocotools breaks score ties by that order)."""

    source: str
    image: np.ndarray  # index into gt.image_ids
    category: np.ndarray  # index into gt.category_ids
    bbox: np.ndarray  # [n, 4]
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    @property
    def image_set(self) -> np.ndarray:
        return np.unique(self.image)


def _check_entry(source: str, i: int, d: Any, img_set: set, cat_set: set, gt: CocoGroundTruth):
    where = f"{source}: entry {i}"
    if not isinstance(d, dict):
        raise ResultsFormatError(f"{where} must be an object; got {type(d).__name__}")
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in d:
            raise ResultsFormatError(
                f"{where} has no {key!r}; a COCO box result needs image_id, category_id, "
                f"bbox [x, y, w, h] and score (keys found: {sorted(d)})"
            )
    if not is_int(d["image_id"]):
        raise ResultsFormatError(f"{where}: 'image_id' must be an integer; got {d['image_id']!r}")
    if d["image_id"] not in img_set:
        raise ResultsFormatError(
            f"{where}: 'image_id' {d['image_id']} is not an image of the ground truth {gt.source} "
            f"({gt.num_images} images"
            + (f", ids {gt.image_ids.min()}..{gt.image_ids.max()}" if gt.num_images else "")
            + "). Results of another data set or split? Compare against the ground truth the "
            "model was run on."
        )
    if not is_int(d["category_id"]):
        raise ResultsFormatError(
            f"{where}: 'category_id' must be an integer; got {d['category_id']!r}"
        )
    if d["category_id"] not in cat_set:
        raise ResultsFormatError(
            f"{where}: 'category_id' {d['category_id']} is not a category of the ground truth "
            f"{gt.source} (ids {gt.category_ids.tolist()[:20]}{'...' if len(cat_set) > 20 else ''})"
        )
    bbox = d["bbox"]
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(map(_is_number, bbox))):
        raise ResultsFormatError(
            f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h]; got {bbox!r}"
        )
    if bbox[2] < 0 or bbox[3] < 0:
        raise ResultsFormatError(
            f"{where}: 'bbox' {list(bbox)} has a negative width or height; COCO boxes are "
            "[x, y, w, h] with w, h >= 0 (was it written as [x1, y1, x2, y2]?)"
        )
    if not _is_number(d["score"]):
        raise ResultsFormatError(f"{where}: 'score' must be a finite number; got {d['score']!r}")


def _results_arrays(data: list | tuple, gt: CocoGroundTruth) -> tuple | None:
    """The results as arrays if every entry is valid, else None (checked in bulk: a per-entry
    Python check costs seconds on a COCO-sized file)."""
    n = len(data)
    try:
        image = np.array([d["image_id"] for d in data])
        category = np.array([d["category_id"] for d in data])
        bbox = np.array([d["bbox"] for d in data])
        score = np.array([d["score"] for d in data])
        bools = any(
            isinstance(d[k], bool) for d in data for k in ("image_id", "category_id", "score")
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if n == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    ok = (
        not bools
        and image.dtype.kind in "iu"
        and category.dtype.kind in "iu"
        and bbox.dtype.kind in "iuf"
        and score.dtype.kind in "iuf"
        and bbox.shape == (n, 4)
        and score.shape == (n,)
        and bool(np.isfinite(bbox).all() and np.isfinite(score).all())
        and bool((bbox[:, 2:] >= 0).all())
        and bool(np.isin(image, gt.image_ids).all() and np.isin(category, gt.category_ids).all())
    )
    if not ok:
        return None
    img_idx = np.searchsorted(gt.image_ids, image)
    cat_idx = np.searchsorted(gt.category_ids, category)
    return img_idx, cat_idx, bbox.astype(np.float64), score.astype(np.float64)


def load_results(
    results: PathLike | list, gt: CocoGroundTruth, name: str | None = None
) -> Detections:
    """Read and check a COCO box results file (``[{image_id, category_id, bbox, score}, ...]``).

    Args:
        results: path to the json, or the list itself.
        gt: the ground truth the results must refer to.
        name: how to name an in-memory list in error messages.

    Returns:
        :class:`Detections`. An empty list is valid (it scores AP 0).

    Raises:
        FileNotFoundError: the file does not exist.
        ResultsFormatError: not a list, an entry without a key, a negative box size, an image or
            category the ground truth does not have; the message names the file, entry and field.
    """
    if isinstance(results, (list, tuple)):
        source, data = name or "<results list>", results
    else:
        source, data = (
            str(results),
            read_json_file(results, "results file", error=ResultsFormatError),
        )
    if not isinstance(data, (list, tuple)):
        raise ResultsFormatError(
            f"{source}: COCO results must be a JSON list of detections "
            f"[{{image_id, category_id, bbox, score}}, ...]; got a {type(data).__name__}"
        )
    arrays = _results_arrays(data, gt)
    if arrays is None:
        # Something is wrong: walk the entries to name the first bad one and its field.
        img_set, cat_set = set(gt.image_ids.tolist()), set(gt.category_ids.tolist())
        for i, d in enumerate(data):
            _check_entry(source, i, d, img_set, cat_set, gt)
        raise ResultsFormatError(f"{source}: malformed results")  # pragma: no cover
    image, category, bbox, score = arrays
    return Detections(
        source=source,
        image=image,
        category=category,
        bbox=bbox,
        score=score,
    )
