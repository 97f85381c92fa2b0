"""The comparison gallery: the images where the baseline and the other model differ most.

A mean over images hides where two detectors disagree. For each image, the true positives each
model has at IoU 0.5 among its detections scoring at least ``score_threshold`` are counted with
the project's pycocotools-equal matching (:func:`~resnext_det.evaluation.match_detections`: the
same greedy matching, crowd and top-100 rules); the images are ranked by the difference of the
two counts (ties: by the difference of false positives, then by image id), and each is drawn as
three panels: ground truth, baseline, other (detectron2's ``Visualizer``), as a PNG.

The report lists the files with :func:`gallery_markdown`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import load_ground_truth, load_results, match_detections

__all__ = ["GalleryImage", "gallery_markdown", "per_image_counts", "write_gallery"]

# MatchTable.tp is [area range, IoU threshold, detection]: "all" areas, IoU 0.5.
_ALL_AREAS, _IOU_50 = 0, 0


@dataclass(frozen=True)
class GalleryImage:
    """One picture of the gallery."""

    image_id: int
    file_name: str
    path: Path
    num_gt: int
    true_positives: dict[str, int]
    false_positives: dict[str, int]


def per_image_counts(gt: Any, dets: Any, score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives per image (ground-truth order) at IoU 0.5, among the detections
    with ``score >= score_threshold`` that pycocotools' matching keeps (top 100 per image and
    category); detections matched to crowd or outside the counted areas are neither."""
    table = match_detections(gt, dets)
    keep = table.det_score >= score_threshold
    tp = table.tp[_ALL_AREAS, _IOU_50] & keep
    fp = keep & ~table.tp[_ALL_AREAS, _IOU_50] & ~table.ignore[_ALL_AREAS, _IOU_50]
    n = table.num_images
    return (
        np.bincount(table.det_image[tp], minlength=n),
        np.bincount(table.det_image[fp], minlength=n),
    )


def _boxes_xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.asarray(xywh, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] += out[:, :2]
    return out


def _panel(rgb: np.ndarray, boxes: np.ndarray, labels: list[str], title: str, color) -> np.ndarray:
    import cv2
    from detectron2.utils.visualizer import Visualizer

    vis = Visualizer(rgb, None, scale=max(1.0, 256 / max(rgb.shape[:2])))
    drawn = vis.overlay_instances(
        boxes=boxes if len(boxes) else None,
        labels=labels or None,
        assigned_colors=[color] * len(boxes) if len(boxes) else None,
    ).get_image()
    bar = np.full((24, drawn.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, drawn], axis=0)


def write_gallery(
    ground_truth: str | os.PathLike | Mapping,
    image_root: str | os.PathLike,
    results: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    baseline: str | None = None,
    top: int = 8,
    score_threshold: float = 0.5,
) -> list[GalleryImage]:
    """Draw the ``top`` images where two models' results differ most.

    Args:
        ground_truth: the COCO json (path or dict) both results refer to.
        image_root: the folder the images' ``file_name`` is relative to.
        results: exactly two ``{name: results json path or list}``.
        out_dir: where the PNGs go (``gallery_01_<image id>.png``, ...).
        baseline: which of the two is the baseline (default: the first).
        top: how many images at most (images where the two counts are equal are left out).
        score_threshold: detections below it are neither counted nor drawn.

    Returns:
        the pictures written, most different first.
    """
    import cv2

    from ..io import write_bytes_atomic

    if len(results) != 2:
        raise ValueError(f"the gallery compares two models; got {len(results)}: {list(results)}")
    names = list(results)
    if baseline is not None:
        if baseline not in results:
            raise ValueError(f"baseline {baseline!r} is not one of the models {names}")
        names.sort(key=lambda n: n != baseline)
    gt = load_ground_truth(ground_truth)
    dets = {n: load_results(results[n], gt, name=n) for n in names}
    counts = {n: per_image_counts(gt, dets[n], score_threshold) for n in names}
    (tp_a, fp_a), (tp_b, fp_b) = counts[names[0]], counts[names[1]]
    order = np.lexsort((gt.image_ids, -np.abs(fp_b - fp_a), -np.abs(tp_b - tp_a)))
    chosen = [int(i) for i in order if tp_a[i] != tp_b[i]][:top]

    images = {img["id"]: img for img in gt.images}
    out = Path(out_dir)
    palette = {"gt": (0.1, 0.7, 0.1), names[0]: (0.1, 0.3, 0.9), names[1]: (0.9, 0.3, 0.1)}
    written = []
    for rank, i in enumerate(chosen, 1):
        image_id = int(gt.image_ids[i])
        info = images[image_id]
        path = Path(image_root) / info["file_name"]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"image {path} of image id {image_id} cannot be read")
        rgb = bgr[:, :, ::-1]
        in_image = gt.ann_image == i
        gt_labels = [gt.category_names[k] for k in gt.ann_category[in_image]]
        panels = [
            _panel(
                rgb, _boxes_xyxy(gt.ann_bbox[in_image]), gt_labels, "ground truth", palette["gt"]
            )
        ]
        for n in names:
            d = dets[n]
            sel = (d.image == i) & (d.score >= score_threshold)
            labels = [
                f"{gt.category_names[k]} {s:.2f}" for k, s in zip(d.category[sel], d.score[sel])
            ]
            tp = counts[n][0][i]
            title = f"{n}{' (baseline)' if n == names[0] else ''}: {tp} TP"
            panels.append(_panel(rgb, _boxes_xyxy(d.bbox[sel]), labels, title, palette[n]))
        height = max(p.shape[0] for p in panels)
        panels = [
            np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
            for p in panels
        ]
        ok, encoded = cv2.imencode(".png", np.concatenate(panels, axis=1)[:, :, ::-1])
        if not ok:  # pragma: no cover
            raise RuntimeError(f"could not encode the gallery picture of image {image_id}")
        target = out / f"gallery_{rank:02d}_{image_id}.png"
        write_bytes_atomic(target, encoded.tobytes(), durable=False)
        written.append(
            GalleryImage(
                image_id=image_id,
                file_name=str(info["file_name"]),
                path=target,
                num_gt=int(in_image.sum()),
                true_positives={n: int(counts[n][0][i]) for n in names},
                false_positives={n: int(counts[n][1][i]) for n in names},
            )
        )
    return written


def gallery_markdown(images: Sequence[GalleryImage], relative_to: str | os.PathLike) -> str:
    """A markdown section listing the pictures (paths relative to the report's folder)."""
    if not images:
        return "## Gallery\n\nNo image where the two models' true positives differ.\n"
    names = list(images[0].true_positives)
    lines = [
        "## Gallery: the images where the models differ most",
        "",
        f"True positives at IoU 0.5 per image (detections drawn and counted above the score "
        f"threshold); panels: ground truth, {names[0]} (baseline), {names[1]}.",
        "",
        f"| image | ground truth | TP {names[0]} | TP {names[1]} | picture |",
        "|---|---|---|---|---|",
    ]
    for g in images:
        rel = os.path.relpath(g.path, relative_to)
        lines.append(
            f"| {g.file_name} (id {g.image_id}) | {g.num_gt} | {g.true_positives[names[0]]} | "
            f"{g.true_positives[names[1]]} | ![{g.image_id}]({rel}) |"
        )
    return "\n".join(lines) + "\n"
