"""A small generated COCO-format detection set for demos and tests that must train in minutes.

Each image has 1-4 objects of four classes, ``disc``, ``square``, ``triangle`` and ``cross``:
one shape per class, with a class-consistent hue (+-0.06 of the hue circle), varied saturation,
brightness, aspect ratio and texture (solid, stripes, checks, speckles). Sizes cover COCO's three
area ranges at the default 128x128 image size (small < 32^2, medium, large > 96^2 pixels). The
backgrounds are grey with a faint tint (noise, gradients, stripes), so objects are the only
saturated pixels: a test can tell object pixels from background pixels in the image bytes alone.

Objects may overlap (a later one hides part of an earlier one; at least 60% of each object stays
visible). Every annotation carries the object's visible pixel mask as COCO RLE; ``bbox`` is the
tight box of that mask in detectron2/COCO continuous coordinates (pixel columns a..b ->
``x = a``, ``width = b - a + 1``) and ``area`` its pixel count, as in COCO, whose evaluation uses
``area`` for the small/medium/large split.

Deterministic: the same arguments give byte-identical json and PNG files (each image draws from its
own ``SeedSequence([seed, split, index])``, so the train images do not depend on ``num_val``).
"""

from __future__ import annotations

import colorsys
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import write_bytes_atomic, write_json_atomic

__all__ = ["SYNTHETIC_CLASSES", "SyntheticCOCO", "make_synthetic_coco", "render_synthetic_image"]

SYNTHETIC_CLASSES = ("disc", "square", "triangle", "cross")
# Hue centres (fraction of the colour circle) a quarter turn apart, so a class's hue range
# (+-_HUE_JITTER) never meets another's.
_HUES = {"disc": 0.0, "square": 0.27, "triangle": 0.55, "cross": 0.80}
_HUE_JITTER = 0.06
# Side ranges (pixels, at image_size 128) for COCO's small / medium / large objects.
_SIZE_BANDS = {"small": (10, 24), "medium": (36, 84), "large": (106, 126)}
_SIZE_PROBS = {"small": 0.30, "medium": 0.45, "large": 0.25}
_MIN_VISIBLE = 0.6
_SPLITS = {"train": 0, "val": 1}
_VERSION = 1  # bump when the drawing changes, so cached sets are regenerated


@dataclass(frozen=True)
class SyntheticCOCO:
    """Where :func:`make_synthetic_coco` wrote the set.

    Attributes:
        root: the output directory.
        train_json, val_json: COCO instances json files.
        train_image_root, val_image_root: the directories their ``file_name`` are relative to.
        classes: class names in category-id order (id 1 is ``classes[0]``).
    """

    root: Path
    train_json: Path
    train_image_root: Path
    val_json: Path
    val_image_root: Path
    classes: tuple[str, ...] = SYNTHETIC_CLASSES

    def register(self, prefix: str = "synthetic") -> tuple[str, str]:
        """Register ``{prefix}_train`` and ``{prefix}_val`` (idempotent); returns the names."""
        from .catalog import register_coco_dataset

        train, val = f"{prefix}_train", f"{prefix}_val"
        register_coco_dataset(train, self.train_json, self.train_image_root)
        register_coco_dataset(val, self.val_json, self.val_image_root)
        return train, val


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    kind = rng.integers(3)
    if kind == 0:  # smooth noise: a coarse random grid, upsampled bilinearly
        coarse = rng.uniform(-1, 1, size=(6, 6)).astype(np.float32)
        smooth = Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR)
        grey = rng.uniform(80, 170) + rng.uniform(20, 50) * np.asarray(smooth)
    elif kind == 1:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy) / size
        g0, g1 = rng.uniform(40, 215, size=2)
        grey = g0 + (g1 - g0) * (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    else:  # stripes of a random period and angle
        a = rng.uniform(0, np.pi)
        period = rng.uniform(6, 24)
        phase = (np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period
        grey = rng.uniform(90, 160) + rng.uniform(20, 55) * np.sin(phase)
    # A faint tint (at most ~+-8% per channel) so backgrounds are not exactly grey.
    tint = 1.0 + rng.uniform(-0.08, 0.08, size=3)
    return grey[..., None] * tint[None, None, :]


def _shape_mask(
    cls: str, x0: float, y0: float, w: float, h: float, flip: bool, size: int
) -> np.ndarray:
    """The shape as a boolean mask, sampled at pixel centres (no anti-aliasing, so the box of the
    mask is exact)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    u, v = (xx - x0) / w, (yy - y0) / h  # the shape's box is [0, 1]^2 in (u, v)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if cls == "disc":
        return ((u - 0.5) ** 2 + (v - 0.5) ** 2) <= 0.25
    if cls == "square":
        return inside
    if cls == "triangle":  # isosceles, apex up (or down when flipped)
        vv = 1 - v if flip else v
        return inside & (np.abs(u - 0.5) <= 0.5 * vv)
    if cls == "cross":
        t = 0.17  # half the arm thickness, as a fraction of the box
        return inside & ((np.abs(u - 0.5) <= t) | (np.abs(v - 0.5) <= t))
    raise ValueError(f"unknown synthetic class {cls!r}; allowed: {SYNTHETIC_CLASSES}")


def _texture(rng: np.random.Generator, cls: str, size: int) -> np.ndarray:
    """An object-colour image (size x size x 3): two shades of one saturated class hue in a
    random pattern."""
    hue = (_HUES[cls] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
    s, v = rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0)
    c1 = np.array(colorsys.hsv_to_rgb(hue, s, v), dtype=np.float32) * 255
    c2 = c1 * 0.7  # same hue and saturation, darker
    yy, xx = np.mgrid[0:size, 0:size]
    kind = rng.integers(4)
    if kind == 0:
        pattern = np.zeros((size, size), dtype=bool)
    elif kind == 1:
        period = int(rng.integers(4, 10))
        pattern = ((xx if rng.integers(2) else yy) // (period // 2)) % 2 == 1
    elif kind == 2:
        cell = int(rng.integers(3, 8))
        pattern = ((xx // cell) + (yy // cell)) % 2 == 1
    else:
        pattern = rng.random((size, size)) < 0.3
    return np.where(pattern[..., None], c2, c1)


def render_synthetic_image(
    rng: np.random.Generator, image_size: int = 128, max_objects: int = 4
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image.

    Returns:
        (uint8 HxWx3 RGB image, [(class index, visible boolean mask), ...] in drawing order).
    """
    scale = image_size / 128.0
    img = _background(rng, image_size)
    labels = np.full((image_size, image_size), -1, dtype=np.int32)
    objects: list[tuple[int, np.ndarray]] = []
    full_area: list[int] = []
    n_wanted = int(rng.integers(1, max_objects + 1))
    bands = [
        str(b) for b in rng.choice(list(_SIZE_PROBS), size=n_wanted, p=list(_SIZE_PROBS.values()))
    ]
    n_large = bands.count("large")
    if n_large > 1:  # one large object fills most of the image: the others become medium
        bands = [b for b in bands if b != "large"] + ["large"] + ["medium"] * (n_large - 1)
    # Large objects first, so that smaller ones lie on top and stay visible.
    bands.sort(key=list(_SIZE_BANDS)[::-1].index)
    for band in bands:
        for _attempt in range(30):
            lo, hi = _SIZE_BANDS[band]
            side = rng.uniform(lo, hi) * scale
            aspect = rng.uniform(0.8, 1.25)
            w, h = min(side * aspect, image_size - 2.0), min(side / aspect, image_size - 2.0)
            x0 = rng.uniform(0, image_size - w)
            y0 = rng.uniform(0, image_size - h)
            cls_idx = int(rng.integers(len(SYNTHETIC_CLASSES)))
            flip = bool(rng.integers(2))
            mask = _shape_mask(SYNTHETIC_CLASSES[cls_idx], x0, y0, w, h, flip, image_size)
            if mask.sum() < 16:
                continue
            # Keep at least _MIN_VISIBLE of every earlier object visible.
            ok = all(
                ((labels == k) & ~mask).sum() >= _MIN_VISIBLE * full_area[k]
                for k in range(len(objects))
            )
            if not ok:
                continue
            tex = _texture(rng, SYNTHETIC_CLASSES[cls_idx], image_size)
            img = np.where(mask[..., None], tex, img)
            labels[mask] = len(objects)
            objects.append((cls_idx, mask))
            full_area.append(int(mask.sum()))
            break
    # Luminance noise, equal in the three channels, so it does not change saturation.
    img = img + rng.normal(0, 4, size=(image_size, image_size, 1))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    visible = [(c, labels == k) for k, (c, _) in enumerate(objects)]
    return img, [(c, m) for c, m in visible if m.any()]


def _mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    # Pixel columns x0..x1 cover the continuous interval [x0, x1 + 1].
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def _png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # PIL writes no timestamp into PNGs: same pixels -> same bytes.
    Image.fromarray(img, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _generate_split(
    split: str, num: int, out_dir: Path, image_size: int, seed: int, max_objects: int
) -> dict:
    from pycocotools import mask as mask_util
    from tqdm import tqdm

    images, annotations = [], []
    image_dir = out_dir / split
    for i in tqdm(range(num), desc=f"synthetic {split}", disable=num < 50, leave=False):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split], i]))
        img, objs = render_synthetic_image(rng, image_size, max_objects)
        file_name = f"{i:06d}.png"
        # Atomic, not fsynced: an fsync per image doubles the time of a set that is cheap to make
        # again (overwrite=True).
        write_bytes_atomic(image_dir / file_name, _png_bytes(img), durable=False)
        image_id = i + 1
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for cls_idx, mask in objs:
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls_idx + 1,
                    "bbox": _mask_box(mask),
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                }
            )
    return {"images": images, "annotations": annotations}


def make_synthetic_coco(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 320,
    num_val: int = 80,
    image_size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
    overwrite: bool = False,
) -> SyntheticCOCO:
    """Write the generated set (``train/``, ``val/`` PNGs and ``annotations/{train,val}.json``).

    A set already in ``out_dir`` made with the same arguments is reused unless ``overwrite``. The
    json files are written last (atomically), so an interrupted run is redone, not half-used.

    Args:
        out_dir: output directory.
        num_train, num_val: number of images per split (>= 1).
        image_size: square image side in pixels (>= 64; sizes scale with it).
        seed: the random seed; the same arguments give byte-identical files.
        max_objects: at most this many objects per image (1 to 8).
        overwrite: regenerate even if a matching set exists.

    Returns:
        A :class:`SyntheticCOCO` with the paths (``.register()`` registers both splits).

    Example:
        >>> ds = make_synthetic_coco("/tmp/synth", num_train=8, num_val=4)
        >>> ds.train_json.name, ds.classes
        ('train.json', ('disc', 'square', 'triangle', 'cross'))
    """
    for name, v, lo in (
        ("num_train", num_train, 1),
        ("num_val", num_val, 1),
        ("image_size", image_size, 64),
        ("max_objects", max_objects, 1),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"make_synthetic_coco: {name} must be an integer >= {lo}, got {v!r}")
    if max_objects > 8:
        raise ValueError(f"make_synthetic_coco: max_objects must be <= 8, got {max_objects}")
    root = Path(out_dir)
    result = SyntheticCOCO(
        root=root,
        train_json=root / "annotations" / "train.json",
        train_image_root=root / "train",
        val_json=root / "annotations" / "val.json",
        val_image_root=root / "val",
    )
    args = {
        "version": _VERSION,
        "seed": int(seed),
        "image_size": image_size,
        "max_objects": max_objects,
    }
    counts = {"train": num_train, "val": num_val}
    if not overwrite and _matches(result, args, counts):
        return result

    categories = [
        {"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(SYNTHETIC_CLASSES)
    ]
    for split, json_path in (("train", result.train_json), ("val", result.val_json)):
        data = _generate_split(split, counts[split], root, image_size, int(seed), max_objects)
        info = {
            "description": "resnext_det synthetic shapes",
            "split": split,
            "num_images": counts[split],
            **args,
        }
        write_json_atomic(json_path, {"info": info, "categories": categories, **data})
    return result


def _matches(result: SyntheticCOCO, args: dict, counts: dict) -> bool:
    """Whether ``result`` already holds a complete set made with ``args``."""
    for split, json_path, image_root in (
        ("train", result.train_json, result.train_image_root),
        ("val", result.val_json, result.val_image_root),
    ):
        try:
            with open(json_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return False
        info = data.get("info", {})
        if {k: info.get(k) for k in args} != args or info.get("num_images") != counts[split]:
            return False
        if not all((image_root / im["file_name"]).is_file() for im in data["images"]):
            return False
    return True
