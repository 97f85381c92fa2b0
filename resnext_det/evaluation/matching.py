"""COCOeval's ``computeIoU`` + ``evaluateImg`` (bbox), done once for every image, vectorised.

See :mod:`resnext_det.evaluation.coco` for why this is not pycocotools' ``evalImgs``.
"""

from __future__ import annotations

import numpy as np

from .accumulate import MatchTable
from .coco import AREA_RANGES, IOU_THRESHOLDS, MAX_DETS, CocoGroundTruth, Detections

__all__ = ["match_detections"]


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
