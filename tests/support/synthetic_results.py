"""COCO-format ground truth and detections with COCO's quirks, for tests and benchmarks.

(Test and benchmark support, not part of the installed package: moved here from
``resnext_det/evaluation/synthetic.py``.)

The ground truth has category ids with gaps (as COCO's 1..90 for 80 classes), crowd regions,
images without annotations, a dataset ``ignore`` key (which COCOeval overrides with ``iscrowd``),
an ``area`` that is not the box area (COCO's comes from the mask) and objects of all three sizes.
Detections are jittered ground truth (true positives at some IoU), duplicates, class confusions and
random boxes, with scores rounded so that ties occur (ties are where evaluators disagree).
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_ground_truth", "synthetic_detections"]

# 12 ids out of COCO's 1..90 with its gaps.
_CATEGORY_IDS = (1, 2, 3, 5, 7, 11, 13, 18, 27, 44, 67, 90)


def synthetic_ground_truth(
    num_images: int = 40, *, num_categories: int = 12, seed: int = 0, max_objects: int = 12
) -> dict:
    """A COCO ground-truth dict (see the module docstring for its quirks)."""
    rng = np.random.default_rng(seed)
    if num_categories <= len(_CATEGORY_IDS):
        cat_ids = list(_CATEGORY_IDS[:num_categories])
    else:  # COCO-like gaps: skip every 9th id
        cat_ids = [i for i in range(1, 10 * num_categories) if i % 9][:num_categories]
    images, anns = [], []
    for i in range(num_images):
        W, H = 640, 480
        # Image ids not contiguous and not in file order, as in real sets.
        img_id = 1000 + 7 * ((i * 13) % num_images) + 3
        images.append({"id": img_id, "width": W, "height": H, "file_name": f"{img_id}.jpg"})
        n = 0 if i % 9 == 4 else int(rng.integers(1, max_objects + 1))
        for _ in range(n):
            # Log-uniform sides: small (< 32^2), medium and large (> 96^2) objects all occur.
            w, h = np.exp(rng.uniform(np.log(4), np.log(300), size=2))
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            crowd = int(rng.random() < 0.06)
            ann = {
                "id": len(anns) + 1,
                "image_id": img_id,
                "category_id": int(rng.choice(cat_ids[: max(1, len(cat_ids) - 1)])),
                "bbox": [round(float(v), 2) for v in (x, y, w, h)],
                # Mask area, smaller than the box: the area range uses this, IoU the box.
                "area": float(w * h * rng.uniform(0.5, 1.0)),
                "iscrowd": crowd,
            }
            if rng.random() < 0.1:
                ann["ignore"] = int(rng.random() < 0.5)
            anns.append(ann)
    # The last category has no annotation at all (COCOeval gives it -1, excluded from means).
    cats = [{"id": c, "name": f"class_{c}", "supercategory": "thing"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": cats}


def synthetic_detections(
    gt: dict,
    *,
    seed: int = 1,
    quality: float = 0.7,
    random_per_image: int = 5,
    score_decimals: int | None = 2,
    image_offset: dict[int, float] | None = None,
) -> list[dict]:
    """COCO results for ``gt``: each object found with probability ``quality`` (IoU with it falls
    as quality falls), plus duplicates, wrong classes and ``random_per_image`` random boxes.

    ``score_decimals`` rounds scores so that ties happen; None keeps them continuous.
    ``image_offset`` (image id -> offset) adds to ``quality`` on that image: a difficulty shared
    by every detector that is given the same offsets (image-level noise common to models).
    """
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    sizes = {im["id"]: (im.get("width", 640), im.get("height", 480)) for im in gt["images"]}
    out = []

    def add(img_id, cat, box, score):
        if score_decimals is not None:
            score = round(score, score_decimals)
        out.append(
            {
                "image_id": img_id,
                "category_id": int(cat),
                "bbox": [float(v) for v in box],
                "score": float(score),
            }
        )

    base_quality = quality
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        if image_offset is not None:
            quality = float(
                np.clip(base_quality + image_offset.get(a["image_id"], 0.0), 0.02, 0.98)
            )
        if rng.random() < quality:
            jitter = (1.0 - quality) * 0.25 + 0.02
            dx, dy = rng.normal(0, jitter, 2) * (w, h)
            sw, sh = np.exp(rng.normal(0, jitter, 2))
            box = (x + dx, y + dy, w * sw, h * sh)
            add(a["image_id"], a["category_id"], box, rng.uniform(0.3, 1.0) * quality + 0.1)
            if rng.random() < 0.2:  # a duplicate: a false positive once the object is taken
                add(a["image_id"], a["category_id"], box, rng.uniform(0.05, 0.9))
        if rng.random() < 0.1:  # the right place, the wrong class
            add(a["image_id"], rng.choice(cat_ids), (x, y, w, h), rng.uniform(0.05, 0.8))
    for im in gt["images"]:
        W, H = sizes[im["id"]]
        for _ in range(random_per_image):
            w, h = np.exp(rng.uniform(np.log(3), np.log(250), size=2))
            box = (rng.uniform(0, W - w), rng.uniform(0, H - h), w, h)
            add(im["id"], rng.choice(cat_ids), box, rng.uniform(0.01, 0.6))
    order = rng.permutation(len(out))  # file order must not matter beyond ties
    return [out[i] for i in order]
