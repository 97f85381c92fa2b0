"""Exact COCO box metrics, with per-image matching done once and accumulation re-runnable.

pycocotools' ``COCOeval`` matches detections to ground truth per image/category/area range and
then accumulates precision over the whole set. For a bootstrap over images the matching is the same
in every resample; only the accumulation changes. So this module splits the two:

* :func:`match_detections` does COCOeval's ``evaluateImg`` greedy matching once, for every image,
  category, area range and IoU threshold, vectorised over detections of equal rank (pycocotools
  loops in Python over T x D x G).
* :meth:`MatchTable.accumulate` is COCOeval's ``accumulate`` for any multiset of images, given as
  integer weights per image (an image drawn k times counts k times), for many multisets at once.

With every weight 1 the numbers equal pycocotools' ``COCOeval`` (bbox) exactly, quirks included:
``iscrowd`` decides a ground truth's ``ignore`` (a dataset's own ``ignore`` key is overwritten, as
pycocotools does), crowd regions use intersection over the detection's area, ties keep
pycocotools' merge-sort order, at most 100 detections per image and category count. We do not reuse
faster-coco-eval here because its C++ per-image results are opaque to Python, so they cannot be
re-accumulated over resamples.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = [
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "MAX_DETS",
    "METRIC_KEYS",
    "RECALL_THRESHOLDS",
    "CocoGroundTruth",
    "Detections",
    "MatchTable",
    "ResultsFormatError",
    "evaluate_results",
    "load_ground_truth",
    "load_results",
    "match_detections",
    "summarize",
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
_SUMMARY = (
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
METRIC_KEYS = tuple(s[0] for s in _SUMMARY)

PathLike = Union[str, os.PathLike]


class ResultsFormatError(ValueError):
    """A ground-truth or results file that cannot be evaluated; the message names the file, the
    entry and the field."""


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


def _read_json(path: PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ResultsFormatError(f"{path}: not valid JSON ({exc})") from exc


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


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
    if not _is_int(d["image_id"]):
        raise ResultsFormatError(f"{where}: 'image_id' must be an integer; got {d['image_id']!r}")
    if d["image_id"] not in img_set:
        raise ResultsFormatError(
            f"{where}: 'image_id' {d['image_id']} is not an image of the ground truth {gt.source} "
            f"({gt.num_images} images"
            + (f", ids {gt.image_ids.min()}..{gt.image_ids.max()})" if gt.num_images else ")")
        )
    if not _is_int(d["category_id"]):
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
        source, data = str(results), _read_json(results, "results")
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


# ----------------------------------------------------------------------------------------------
# Matching (COCOeval.computeIoU + evaluateImg), once
# ----------------------------------------------------------------------------------------------


def _box_iou_pairs(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' ``bbIou`` for paired rows, in the same float64 operation order."""
    w = np.minimum(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.maximum(d[:, 0], g[:, 0])
    h = np.minimum(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.maximum(d[:, 1], g[:, 1])
    inter = w * h
    da = d[:, 2] * d[:, 3]
    union = np.where(crowd, da, da + g[:, 2] * g[:, 3] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + np.arange(total) - offsets


@dataclass
class MatchTable:
    """Per-detection outcome of COCO matching, for every area range and IoU threshold.

    Detections are those COCOeval keeps (top 100 per image and category), sorted per category by
    pycocotools' accumulation order (score descending; ties by image, then rank in the image).
    """

    num_images: int
    category_ids: np.ndarray
    category_names: list[str]
    det_category: np.ndarray  # [n]
    det_image: np.ndarray  # [n]
    det_rank: np.ndarray  # [n] rank by score within (image, category)
    det_score: np.ndarray  # [n]
    tp: np.ndarray  # [A, T, n] bool: matched to a non-ignored ground truth
    ignore: np.ndarray  # [A, T, n] bool: matched to an ignored one, or unmatched and out of range
    gt_image: np.ndarray  # [g]
    gt_category: np.ndarray  # [g]
    gt_ignore: np.ndarray  # [A, g] bool
    category_slices: list[slice] = field(repr=False, default_factory=list)

    def _category_inputs(self, k: int, a: int, max_det: int):
        sl = self.category_slices[k]
        keep = self.det_rank[sl] < max_det
        det_image = self.det_image[sl][keep]
        tp = self.tp[a, :, sl][:, keep]
        ig = self.ignore[a, :, sl][:, keep]
        in_k = (self.gt_category == k) & ~self.gt_ignore[a]
        gt_img, gt_cnt = np.unique(self.gt_image[in_k], return_counts=True)
        return det_image, tp, ig, gt_img, gt_cnt

    def accumulate(
        self,
        weights: np.ndarray | None = None,
        areas: tuple[str, ...] = tuple(AREA_RANGES),
        max_dets: tuple[int, ...] = MAX_DETS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval.accumulate for one or many multisets of images.

        Args:
            weights: [B, num_images] non-negative integers, how many times each image counts in
                each of B resamples; None means every image once (B = 1).
            areas: area-range names to compute (keys of :data:`AREA_RANGES`).
            max_dets: detection limits per image to compute.

        Returns:
            precision [B, T, R, K, len(areas), len(max_dets)] and recall [B, T, K, A, M], with -1
            where a category has no non-ignored ground truth (COCOeval's convention).
        """
        W = _as_weights(weights, self.num_images)
        WT = np.ascontiguousarray(W.T)
        B, T, R, K = len(W), len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(self.category_ids)
        area_index = [list(AREA_RANGES).index(a) for a in areas]
        precision = -np.ones((B, T, R, K, len(areas), len(max_dets)))
        recall = -np.ones((B, T, K, len(areas), len(max_dets)))
        for k in range(K):
            for ai, a in enumerate(area_index):
                for mi, m in enumerate(max_dets):
                    q, rc, valid = _accumulate_category(WT, *self._category_inputs(k, a, m))
                    precision[valid, :, :, k, ai, mi] = q[valid]
                    recall[valid, :, k, ai, mi] = rc[valid]
        return precision, recall

    def bootstrap_inputs(self) -> list[tuple]:
        """Per-category accumulation inputs at area "all", 100 detections (what AP, AP50 and AP75
        use), computed once and reused by every resample."""
        return [self._category_inputs(k, 0, MAX_DETS[-1]) for k in range(len(self.category_ids))]

    def ap_from_weights(
        self, weights: np.ndarray, inputs: list[tuple] | None = None
    ) -> dict[str, np.ndarray]:
        """AP, AP50 and AP75 (0-100) for each row of ``weights`` [B, num_images], without keeping
        the [B, T, R, K] precision array; equals ``summarize(*accumulate(weights))`` row by row."""
        W = _as_weights(weights, self.num_images)
        WT = np.ascontiguousarray(W.T)
        inputs = self.bootstrap_inputs() if inputs is None else inputs
        t50 = int(np.flatnonzero(IOU_THRESHOLDS == 0.5)[0])
        t75 = int(np.flatnonzero(IOU_THRESHOLDS == 0.75)[0])
        sums = {key: np.zeros(len(W)) for key in ("AP", "AP50", "AP75")}
        count = np.zeros(len(W))
        for args in inputs:
            q, _, valid = _accumulate_category(WT, *args)
            # COCOeval averages all (t, r, k) entries that are not -1; every valid category has
            # T x R of them, so the mean over entries is the mean over categories of their means.
            sums["AP"] += np.where(valid, q.mean(axis=(1, 2)), 0.0)
            sums["AP50"] += np.where(valid, q[:, t50].mean(axis=1), 0.0)
            sums["AP75"] += np.where(valid, q[:, t75].mean(axis=1), 0.0)
            count += valid
        with np.errstate(divide="ignore", invalid="ignore"):
            return {key: 100.0 * np.where(count > 0, v / count, np.nan) for key, v in sums.items()}


def _as_weights(weights: np.ndarray | None, num_images: int) -> np.ndarray:
    if weights is None:
        return np.ones((1, num_images), dtype=np.int32)
    W = np.asarray(weights)
    if W.ndim == 1:
        W = W[None]
    if W.ndim != 2 or W.shape[1] != num_images:
        raise ValueError(f"weights must have shape [B, {num_images}]; got {W.shape}")
    if W.size and (W.min() < 0 or not np.issubdtype(W.dtype, np.integer)):
        raise ValueError("weights must be non-negative integers (how often each image is drawn)")
    return W.astype(np.int32, copy=False)


def match_detections(gt: CocoGroundTruth, dets: Detections) -> MatchTable:
    """COCOeval's ``computeIoU`` + ``evaluateImg`` (bbox) for all images at once.

    Greedy matching is sequential only within one image and category: detection r can take a
    ground truth only if detections 0..r-1 of the same image did not. So the loop runs over ranks
    (at most 100), each step matching every image/category's r-th detection in one vectorised
    pass, and only over (detection, ground truth) pairs with IoU >= 0.5 (no other can match).
    """
    A, T = len(AREA_RANGES), len(IOU_THRESHOLDS)
    K = len(gt.category_ids)
    max_det = MAX_DETS[-1]

    # Ground truth grouped by (image, category), file order kept within a group.
    g_key_raw = gt.ann_image * K + gt.ann_category
    g_order = np.argsort(g_key_raw, kind="stable")
    g_key = g_key_raw[g_order]
    g_bbox, g_area = gt.ann_bbox[g_order], gt.ann_area[g_order]
    g_crowd, g_id = gt.ann_crowd[g_order], gt.ann_id[g_order]
    lo = np.array([r[0] for r in AREA_RANGES.values()])[:, None]
    hi = np.array([r[1] for r in AREA_RANGES.values()])[:, None]
    # COCOeval._prepare: ignore = iscrowd; evaluateImg: or outside the area range.
    g_ignore = g_crowd[None] | (g_area[None] < lo) | (g_area[None] > hi)  # [A, g]

    # Detections grouped by (image, category), by score (merge sort: file order breaks ties).
    d_key_raw = dets.image * K + dets.category
    d_order = np.lexsort((np.arange(len(dets)), -dets.score, d_key_raw))
    d_key = d_key_raw[d_order]
    first = np.searchsorted(d_key, d_key, side="left")
    rank = np.arange(len(d_key)) - first
    keep = rank < max_det
    d_order, d_key, rank = d_order[keep], d_key[keep], rank[keep]
    d_bbox, d_score = dets.bbox[d_order], dets.score[d_order]
    n = len(d_key)

    # IoU of each detection with the ground truth of its image and category.
    g_start = np.searchsorted(g_key, d_key, side="left")
    g_count = np.searchsorted(g_key, d_key, side="right") - g_start
    pair_d = np.repeat(np.arange(n), g_count)
    pair_g = _ranges(g_start, g_count)
    iou = _box_iou_pairs(d_bbox[pair_d], g_bbox[pair_g], g_crowd[pair_g])
    cand = iou >= IOU_THRESHOLDS[0]  # NaN (0/0 on degenerate crowd) compares False
    pair_d, pair_g, iou = pair_d[cand], pair_g[cand], iou[cand]
    # By rank, then detection; ground truth stays in file order within a detection.
    by_rank = np.lexsort((pair_g, pair_d, rank[pair_d]))
    pair_d, pair_g, iou = pair_d[by_rank], pair_g[by_rank], iou[by_rank]
    pair_rank = rank[pair_d]

    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None]
    gt_taken = np.zeros((A, T, len(g_key)), dtype=bool)
    matched = np.zeros((A, T, n), dtype=bool)
    matched_ignored = np.zeros((A, T, n), dtype=bool)
    matched_id0 = np.zeros((A, T, n), dtype=bool)
    rank_bounds = np.searchsorted(pair_rank, np.arange(max_det + 1))
    for r in range(max_det):
        s, e = rank_bounds[r], rank_bounds[r + 1]
        if s == e:
            continue
        pd, pg, pi = pair_d[s:e], pair_g[s:e], iou[s:e]
        seg_start = np.flatnonzero(np.r_[True, pd[1:] != pd[:-1]])
        seg_len = np.diff(np.r_[seg_start, len(pd)])
        # A ground truth already taken is skipped unless it is a crowd region.
        ok = (~gt_taken[:, :, pg] | g_crowd[pg]) & (pi >= thr)  # [A, T, S]
        ign = g_ignore[:, pg][:, None, :]
        regular = ok & ~ign
        # pycocotools scans non-ignored ground truth first and stops there if one matched.
        has_regular = np.logical_or.reduceat(regular, seg_start, axis=2)
        use = np.where(np.repeat(has_regular, seg_len, axis=2), regular, ok)
        val = np.where(use, pi, -1.0)
        best = np.maximum.reduceat(val, seg_start, axis=2)
        # The best IoU wins; among equal IoUs the later ground truth (">=" in pycocotools' scan).
        hit = use & (val == np.repeat(best, seg_len, axis=2))
        choice = np.maximum.reduceat(np.where(hit, np.arange(len(pd)), -1), seg_start, axis=2)
        ai, ti, si = np.nonzero(choice >= 0)
        gsel = pg[choice[ai, ti, si]]
        dsel = pd[seg_start[si]]
        gt_taken[ai, ti, gsel] = True
        matched[ai, ti, dsel] = True
        matched_ignored[ai, ti, dsel] = g_ignore[ai, gsel]
        matched_id0[ai, ti, dsel] = g_id[gsel] == 0

    # pycocotools stores the matched gt id and tests it for non-zero: id 0 reads as unmatched.
    hit_id = matched & ~matched_id0
    d_area = d_bbox[:, 2] * d_bbox[:, 3]  # loadRes: area = w * h for box results
    out_of_range = ((d_area[None] < lo) | (d_area[None] > hi))[:, None, :]
    ignore = matched_ignored | (~hit_id & out_of_range)
    tp = hit_id & ~ignore

    # Accumulation order: category, then score descending; ties by image, then rank in image.
    d_image, d_category = dets.image[d_order], dets.category[d_order]
    acc = np.lexsort((rank, d_image, -d_score, d_category))
    d_category = d_category[acc]
    bounds = np.searchsorted(d_category, np.arange(K + 1))
    return MatchTable(
        num_images=gt.num_images,
        category_ids=gt.category_ids,
        category_names=gt.category_names,
        det_category=d_category,
        det_image=d_image[acc],
        det_rank=rank[acc],
        det_score=d_score[acc],
        tp=tp[:, :, acc],
        ignore=ignore[:, :, acc],
        gt_image=gt.ann_image[g_order],
        gt_category=gt.ann_category[g_order],
        gt_ignore=g_ignore,
        category_slices=[slice(bounds[k], bounds[k + 1]) for k in range(K)],
    )


# ----------------------------------------------------------------------------------------------
# Accumulation (COCOeval.accumulate), vectorised over resamples
# ----------------------------------------------------------------------------------------------


def _min_tp_for_recall(npig: np.ndarray) -> np.ndarray:
    """For each row's npig and each recall threshold r, the least integer m with fl(m / npig) >= r.

    COCOeval finds the first detection whose recall ``tp / npig`` (float64) reaches r; working with
    the integer count keeps that comparison bit-exact while vectorising over rows.
    """
    npig = npig.astype(np.float64)[:, None]
    r = RECALL_THRESHOLDS[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.ceil(r * npig)
        for _ in range(3):  # ceil(r * npig) is off by at most one after rounding
            m = np.where(m / npig < r, m + 1, m)
            m = np.where((m >= 1) & ((m - 1) / npig >= r), m - 1, m)
    return np.where(npig > 0, m, np.inf)


def _accumulate_category(
    WT: np.ndarray,
    det_image: np.ndarray,
    tp: np.ndarray,
    ig: np.ndarray,
    gt_img: np.ndarray,
    gt_cnt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCOeval's per (category, area, maxDet) accumulation for B weightings of the images.

    Interpolated precision at recall r is the best precision at any point with recall >= r, and
    precision only peaks right after a true positive; so only true-positive positions are needed.
    False positives before each of them are all detections before it minus true positives minus
    ignored ones, which avoids a [T, n, B] cumulative sum. Arrays are detection-major ([n, B]):
    gathering an image's weights is then a contiguous row copy, not a strided gather.

    Args:
        WT: [num_images, B] weights (transposed, C-contiguous).

    Returns:
        precision q [B, T, R], recall [B, T], valid [B] (npig > 0).
    """
    B, T, R = WT.shape[1], tp.shape[0], len(RECALL_THRESHOLDS)
    npig = gt_cnt @ WT[gt_img] if len(gt_img) else np.zeros(B, dtype=np.int64)
    valid = npig > 0
    q = np.zeros((B, T, R))
    rc = np.zeros((B, T))
    any_tp = np.flatnonzero(tp.any(axis=0))
    if any_tp.size == 0:
        return q, rc, valid
    w = WT[det_image[: any_tp[-1] + 1]]  # [n, B]; nothing after the last true positive matters
    # Weight of all detections up to each true-positive position: sums between consecutive
    # true-positive positions, then their running total.
    cw = np.cumsum(np.add.reduceat(w, np.r_[0, any_tp[:-1] + 1], axis=0), axis=0)
    need = _min_tp_for_recall(npig)  # [B, R]
    cols = np.arange(B)[:, None]
    eps = np.spacing(1)
    for t in range(T):
        tp_pos = np.flatnonzero(tp[t])
        if tp_pos.size == 0:
            continue
        tpc = np.cumsum(w[tp_pos], axis=0)  # [n_tp, B]
        fpc = cw[np.searchsorted(any_tp, tp_pos)] - tpc
        ig_pos = np.flatnonzero(ig[t, : any_tp[-1] + 1])
        if ig_pos.size:
            igc = np.cumsum(w[ig_pos], axis=0)
            igc = np.concatenate([np.zeros((1, B), igc.dtype), igc])
            fpc -= igc[np.searchsorted(ig_pos, tp_pos)]
        tpf = tpc.astype(np.float64)
        pr = tpf / (fpc.astype(np.float64) + tpf + eps)  # COCOeval: tp / (fp + tp + eps)
        env = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            rc[:, t] = tpf[-1] / npig
        # First true-positive position whose cumulative count reaches `need`, per resample: one
        # searchsorted over the resamples laid end to end, offset by more than any count.
        n_tp = tp_pos.size
        big = float(tpc[-1].max()) + 2.0
        offset = np.arange(B, dtype=np.float64)[:, None] * big
        flat = (tpf.T + offset).ravel()
        keys = np.minimum(need, big - 1) + offset
        ind = np.searchsorted(flat, keys.ravel(), side="left").reshape(B, R) - cols * n_tp
        q[:, t] = np.where(ind < n_tp, env[np.minimum(ind, n_tp - 1), cols], 0.0)
    return q, rc, valid


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------


def _mean_valid(s: np.ndarray) -> float:
    s = s[s > -1]
    return float(np.mean(s)) if s.size else float("nan")


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """COCOeval.summarize's 12 numbers from one accumulation (areas all/small/medium/large,
    max dets 1/10/100), on COCO's 0-100 scale; NaN where COCOeval prints -1."""
    areas, max_dets = list(AREA_RANGES), list(MAX_DETS)
    out = {}
    for key, is_ap, iou, area, md in _SUMMARY:
        a, m = areas.index(area), max_dets.index(md)
        s = precision[..., a, m] if is_ap else recall[..., a, m]
        if iou is not None:
            s = s[np.flatnonzero(iou == IOU_THRESHOLDS)]
        out[key] = 100.0 * _mean_valid(s)
    return out


def per_category_ap(table: MatchTable, precision: np.ndarray) -> dict[str, float]:
    """AP per category (area all, 100 dets) on the 0-100 scale, as detectron2's COCOEvaluator
    reports it; NaN for a category without ground truth."""
    return {
        name: 100.0 * _mean_valid(precision[:, :, k, 0, -1])
        for k, name in enumerate(table.category_names)
    }


def pr_curve(precision: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Interpolated precision at each recall threshold, IoU ``iou``, area all, 100 dets, averaged
    over categories with ground truth (COCO's AP@iou is the mean of this curve)."""
    t = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))[0])
    p = precision[t, :, :, 0, -1]  # [R, K]
    valid = (p > -1).all(axis=0)
    if not valid.any():
        return np.full(len(RECALL_THRESHOLDS), np.nan)
    return p[:, valid].mean(axis=1)


def evaluate_results(
    gt: PathLike | dict | CocoGroundTruth, results: PathLike | list | Detections
) -> dict[str, Any]:
    """COCO box metrics of one results file.

    Args:
        gt: ground truth (path, dict or :class:`CocoGroundTruth`).
        results: COCO results (path, list or :class:`Detections`).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}``
        on the 0-100 scale (equal to pycocotools' ``COCOeval.stats`` x 100), plus
        ``"per_category_AP": {name: AP}`` and ``"pr_curve_50"`` (precision at 101 recall points).

    Example:
        >>> m = evaluate_results("instances_val.json", "detections.json")
        >>> m["AP"], m["AP50"]
    """
    gt = load_ground_truth(gt)
    dets = results if isinstance(results, Detections) else load_results(results, gt)
    table = match_detections(gt, dets)
    precision, recall = table.accumulate()
    out: dict[str, Any] = summarize(precision[0], recall[0])
    out["per_category_AP"] = per_category_ap(table, precision[0])
    out["pr_curve_50"] = pr_curve(precision[0]).tolist()
    return out
