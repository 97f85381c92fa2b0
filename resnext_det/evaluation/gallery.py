"""The comparison gallery: the images where the baseline and another model differ most.

A mean over images hides where two detectors disagree. For each image, the true positives a
model has at IoU 0.5 among its detections scoring at least ``score_threshold`` are counted with
the project's pycocotools-equal matching (the tables ``match_detections`` made for the metrics:
the same greedy matching, crowd and top-100 rules), averaged over the
model's training runs. The images are ranked by the difference of the two means (ties: by the
difference of false positives, then by image id), and each is drawn as three panels: ground
truth, baseline, other (detectron2's ``Visualizer``; the boxes of each model's first run), as a
PNG that :func:`~resnext_det.evaluation.compare_results` writes with the rest of the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .accumulate import MatchTable
from .coco import CocoGroundTruth, Detections

__all__ = [
    "GALLERY_DIR",
    "image_paths",
    "drop_overlapping_labels",
    "join_panels",
    "per_image_counts",
    "render_gallery",
    "titled",
]

logger = logging.getLogger(__name__)

GALLERY_DIR = "gallery"
# MatchTable.tp is [area range, IoU threshold, detection]: "all" areas, IoU 0.5.
_ALL_AREAS, _IOU_50 = 0, 0


def per_image_counts(table: MatchTable, score_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives per image (ground-truth order) at IoU 0.5, among the detections
    with ``score >= score_threshold`` that pycocotools' matching keeps (top 100 per image and
    category); detections matched to crowd or outside the counted areas are neither."""
    keep = table.det_score >= score_threshold
    tp = table.tp[_ALL_AREAS, _IOU_50] & keep
    fp = keep & ~table.tp[_ALL_AREAS, _IOU_50] & ~table.ignore[_ALL_AREAS, _IOU_50]
    n = table.num_images
    return (
        np.bincount(table.det_image[tp], minlength=n),
        np.bincount(table.det_image[fp], minlength=n),
    )


def image_paths(
    gt: CocoGroundTruth, images: str | os.PathLike | Mapping[int, str | os.PathLike]
) -> dict[int, Path]:
    """Image id -> file: ``images`` is a folder (joined with each image's ``file_name``, as
    detectron2's ``load_coco_json`` does) or already a mapping of image ids to paths.

    As in detectron2, a ``file_name`` may point outside the folder (``../x.png``, an absolute
    path): such files are read too (the ground truth is the user's), with a warning that names
    how many and the first."""
    if isinstance(images, Mapping):
        return {int(k): Path(v) for k, v in images.items()}
    root = Path(images)
    paths = {int(img["id"]): root / str(img["file_name"]) for img in gt.images}
    base = Path(os.path.realpath(root))
    outside = [p for p in paths.values() if not Path(os.path.realpath(p)).is_relative_to(base)]
    if outside:
        logger.warning(
            f"{len(outside)} of the ground truth's file_name lie outside the image folder "
            f"{os.fspath(root)!r} (e.g. {os.fspath(outside[0])!r}); the gallery reads them there"
        )
    return paths


def _boxes_xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.asarray(xywh, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] += out[:, :2]
    return out


def _fit(text: str, width: int, scale: float, thickness: int) -> str:
    """``text``, shortened with "..." until it fits ``width`` pixels (cv2's Hershey font)."""
    import cv2

    def size(t: str) -> int:
        return cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0]

    if size(text) <= width:
        return text
    while text and size(text + "...") > width:
        text = text[:-1]
    return text + "..."


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` (RGB) under a white bar holding ``title`` (one line per ``\\n``), its letters
    scaled with the panel's width (about 1/40 of it, at least 14 px: legible when the picture is
    opened at its size or shown to fit a screen), each line shortened with "..." to fit it."""
    import cv2

    width = panel.shape[1]
    height = max(14, min(64, width // 40))  # letter height in pixels
    scale = cv2.getFontScaleFromHeight(cv2.FONT_HERSHEY_SIMPLEX, height, 1)
    thickness = max(1, height // 14)
    margin = max(4, height // 3)
    lines = [_fit(line, width - 2 * margin, scale, thickness) for line in title.split("\n")]
    bar = np.full((len(lines) * (height + margin) + margin, width, 3), 255, dtype=np.uint8)
    for k, text in enumerate(lines, 1):
        cv2.putText(
            bar, text, (margin, k * (height + margin)), cv2.FONT_HERSHEY_SIMPLEX, scale,
            (0, 0, 0), thickness, cv2.LINE_AA,
        )  # fmt: skip
    return np.concatenate([bar, panel], axis=0)


def join_panels(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels (RGB) side by side, each in a grey border, with a white gap between them (about
    1/100 of a panel's width, at least 8 px), so that a box at one panel's edge never runs into
    the next; shorter panels are padded with white below."""
    width = max(p.shape[1] for p in panels)
    gap = max(8, width // 100)
    line = max(1, width // 800)
    grey = np.array([150, 150, 150], dtype=np.uint8)
    framed = []
    for p in panels:
        p = np.pad(p, ((line, line), (line, line), (0, 0)))
        p[:line], p[-line:], p[:, :line], p[:, -line:] = grey, grey, grey, grey
        framed.append(p)
    height = max(p.shape[0] for p in framed)
    white = np.full((height, gap, 3), 255, dtype=np.uint8)
    out: list[np.ndarray] = []
    for p in framed:
        if out:
            out.append(white)
        out.append(np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255))
    return np.concatenate(out, axis=1)


def drop_overlapping_labels(drawn: Any) -> int:
    """Remove the labels of a detectron2 ``VisImage`` that overlap a label drawn before them
    (the Visualizer draws the largest boxes first and places each label at its box's corner
    without looking at the others, so neighbouring scores printed over each other). Every box
    stays; returns how many labels were removed."""
    renderer = drawn.fig.canvas.get_renderer()
    kept: list[Any] = []
    removed = 0
    for text in list(drawn.ax.texts):
        extent = text.get_window_extent(renderer)
        if any(extent.overlaps(k) for k in kept):
            text.remove()
            removed += 1
        else:
            kept.append(extent)
    return removed


def _panel(rgb: np.ndarray, boxes: np.ndarray, labels: list[str], title: str, color) -> np.ndarray:
    from detectron2.utils.visualizer import Visualizer

    vis = Visualizer(rgb, None, scale=max(1.0, 256 / max(rgb.shape[:2])))
    drawn = vis.overlay_instances(
        boxes=boxes if len(boxes) else None,
        labels=labels or None,
        assigned_colors=[color] * len(boxes) if len(boxes) else None,
    )
    drop_overlapping_labels(drawn)
    return titled(drawn.get_image(), title)


def _mean_counts(runs: Sequence[MatchTable], score_threshold: float) -> tuple[np.ndarray, ...]:
    counts = [per_image_counts(t, score_threshold) for t in runs]
    return (
        np.mean([tp for tp, _ in counts], axis=0),
        np.mean([fp for _, fp in counts], axis=0),
        counts[0][0],
    )


def render_gallery(
    gt: CocoGroundTruth,
    images: Mapping[int, Path],
    runs: Mapping[str, Sequence[tuple[Detections, MatchTable]]],
    *,
    top: int = 8,
    score_threshold: float = 0.5,
    file_prefix: str,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The ``top`` images where two models differ most, drawn.

    Args:
        gt: the ground truth both models were matched against.
        images: image id -> file (:func:`image_paths`).
        runs: exactly two ``{name: [(detections, match table) per training run]}``, the
            baseline first.
        top: how many images at most (images where the two means are equal are left out).
        score_threshold: detections below it are neither counted nor drawn.
        file_prefix: the pictures' names start with it (unique per model of the report:
            :func:`resnext_det.io.file_name_for` of the other model's name).
        progress: a tqdm bar over the pictures.

    Returns:
        ``(entry, pictures)``: the report's entry for this pair (the images, their per-image
        counts and each picture's path relative to the report folder) and the PNG bytes by that
        path, for the report writer to write with the rest, all or nothing.

    Raises:
        FileNotFoundError: an image to draw is missing (the path is named).
        BadFileError: an image that cannot be decoded, or declares more pixels than
            :data:`~resnext_det.data.images.MAX_IMAGE_PIXELS` (refused before decoding).
    """
    import cv2

    from ..data.images import ImageCheckError, read_image
    from ..errors import BadFileError

    if len(runs) != 2:
        raise ValueError(f"the gallery compares two models; got {len(runs)}: {list(runs)}")
    (base, base_runs), (other, other_runs) = runs.items()
    means = {
        name: _mean_counts([t for _, t in r], score_threshold)
        for name, r in ((base, base_runs), (other, other_runs))
    }
    (tp_a, fp_a, _), (tp_b, fp_b, _) = means[base], means[other]
    order = np.lexsort((gt.image_ids, -np.abs(fp_b - fp_a), -np.abs(tp_b - tp_a)))
    chosen = [int(i) for i in order if tp_a[i] != tp_b[i]][:top]

    info = {img["id"]: img for img in gt.images}
    palette = {"gt": (0.1, 0.7, 0.1), base: (0.1, 0.3, 0.9), other: (0.9, 0.3, 0.1)}
    entries, pictures = [], {}
    for rank, i in enumerate(tqdm(chosen, desc=f"gallery {other}", disable=not progress), 1):
        image_id = int(gt.image_ids[i])
        path = images.get(image_id)
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"gallery: image id {image_id} ({info[image_id]['file_name']}) cannot be read "
                f"at {path}; give the folder the ground truth's file_name are relative to "
                "(--image-root), or no gallery (--gallery 0)"
            )
        try:
            rgb = read_image(path, "RGB")
        except ImageCheckError as exc:
            raise BadFileError(
                f"gallery: image id {image_id}: {exc}; or no gallery (--gallery 0)"
            ) from None
        in_image = gt.ann_image == i
        gt_labels = [gt.category_names[k] for k in gt.ann_category[in_image]]
        gt_boxes = _boxes_xyxy(gt.ann_bbox[in_image])
        panels = [
            _panel(
                rgb, gt_boxes, gt_labels, f"ground truth\n{len(gt_boxes)} objects", palette["gt"]
            )
        ]
        for name, name_runs in ((base, base_runs), (other, other_runs)):
            d = name_runs[0][0]
            sel = (d.image == i) & (d.score >= score_threshold)
            labels = [
                f"{gt.category_names[k]} {s:.2f}" for k, s in zip(d.category[sel], d.score[sel])
            ]
            mean_tp, _, first_tp = means[name]
            title = f"{name}{' (baseline)' if name == base else ''}"
            # Two lines: the name, then the counts (one line ran into the next panel's title).
            if len(name_runs) > 1:
                title += f"\nrun 0: {first_tp[i]} TP (mean of {len(name_runs)}: {mean_tp[i]:.1f})"
            else:
                title += f"\n{first_tp[i]} TP"
            panels.append(_panel(rgb, _boxes_xyxy(d.bbox[sel]), labels, title, palette[name]))
        ok, encoded = cv2.imencode(".png", join_panels(panels)[:, :, ::-1])
        if not ok:  # pragma: no cover
            raise RuntimeError(f"could not encode the gallery picture of image {image_id}")
        picture = f"{GALLERY_DIR}/{file_prefix}_{rank:02d}_{image_id}.png"
        pictures[picture] = encoded.tobytes()
        entries.append(
            {
                "image_id": image_id,
                "file_name": str(info[image_id]["file_name"]),
                "picture": picture,
                "num_gt": int(in_image.sum()),
                "true_positives": {n: float(means[n][0][i]) for n in (base, other)},
                "false_positives": {n: float(means[n][1][i]) for n in (base, other)},
            }
        )
    entry = {
        "model": other,
        "baseline": base,
        "runs": {base: len(base_runs), other: len(other_runs)},
        "iou": 0.5,
        "score_threshold": score_threshold,
        "images": entries,
    }
    return entry, pictures
