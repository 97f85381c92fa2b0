"""COCOeval's ``accumulate``, re-runnable over any multiset of images (the bootstrap's need).

:class:`MatchTable` holds the outcome of matching (:func:`~resnext_det.evaluation.matching.
match_detections`) as flat arrays; :meth:`MatchTable.accumulate` is COCOeval's ``accumulate`` for
integer weights per image (an image drawn k times counts k times), for many weightings at once.
With every weight 1 it equals pycocotools to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .coco import AREA_RANGES, IOU_THRESHOLDS, MAX_DETS, RECALL_THRESHOLDS

__all__ = ["MatchTable"]


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
