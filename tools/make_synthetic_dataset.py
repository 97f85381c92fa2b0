#!/usr/bin/env python
"""Write the generated demo detection set (COCO json + PNGs) used by the demo and the tests.

Example:
    .venv/bin/python tools/make_synthetic_dataset.py --out /tmp/synthetic --seed 0

Writes OUT/train/*.png, OUT/val/*.png, OUT/annotations/{train,val}.json; the same arguments give
byte-identical files (see resnext_det/data/synthetic.py).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from resnext_det.data import load_coco_json_checked, make_synthetic_coco  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=320)
    p.add_argument("--num-val", type=int, default=80)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--overwrite", action="store_true", help="regenerate even if the set exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        ds = make_synthetic_coco(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.image_size,
            seed=args.seed,
            max_objects=args.max_objects,
            overwrite=args.overwrite,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, path in (("train", ds.train_json), ("val", ds.val_json)):
        data, summary = load_coco_json_checked(path)
        # COCO's area ranges, as its evaluation splits them.
        sizes = Counter(
            "small" if a["area"] < 32**2 else "medium" if a["area"] < 96**2 else "large"
            for a in data["annotations"]
        )
        print(
            f"{split}: {summary.num_images} images, {summary.num_annotations} objects "
            f"(small {sizes['small']}, medium {sizes['medium']}, large {sizes['large']}) -> {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
