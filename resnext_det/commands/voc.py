"""``resnext-det voc-to-coco`` / ``tools/voc_to_coco.py``: convert Pascal VOC XML annotations
(one per image) to a COCO instances json.

Example (the raccoon set's 160-image train split):
    resnext-det voc-to-coco --xml-dir ../shared/data/raccoon/annotations \
        --image-dir ../shared/data/raccoon/images --split ../shared/data/raccoon/train_labels.csv \
        --out /tmp/raccoon_train.json

Every image is decoded before the json is written, so a truncated or 16-bit image shows here and
not at some training iteration. The bad-data policies (--bad-boxes, --bad-images,
--skip-bad-files, --size-mismatch, --difficult) are described in resnext_det/data/voc_convert.py.
"""

from __future__ import annotations

import argparse

from ..data.voc_convert import (
    BAD_BOX_POLICIES,
    BAD_IMAGE_POLICIES,
    DIFFICULT_POLICIES,
    SIZE_MISMATCH_POLICIES,
    convert_voc,
)
from .common import command

__all__ = ["get_parser", "main"]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert Pascal VOC XML annotations to a COCO json.")
    p.add_argument("--xml-dir", required=True, help="directory of VOC *.xml files")
    p.add_argument("--image-dir", required=True, help="directory of the images")
    p.add_argument("--out", required=True, help="output COCO json (written atomically)")
    p.add_argument(
        "--split",
        help="file listing the images to take: names with or without extension, one per line, "
        "or a CSV with a 'filename' column (default: every XML)",
    )
    p.add_argument(
        "--classes",
        help="comma-separated class names in category-id order (default: sorted names found)",
    )
    p.add_argument("--bad-boxes", choices=BAD_BOX_POLICIES, default="clip")
    p.add_argument(
        "--bad-images",
        choices=BAD_IMAGE_POLICIES,
        default="error",
        help="images that do not decode (truncated, corrupt, not an image) or that detectron2 "
        "would clip to 8 bits (16-bit grey PNG): 'error' names every one, 'skip' leaves them out",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="threads that decode the images (default: the CPU count, at most 8)",
    )
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="skip malformed XMLs and those whose image is missing or bad, counted",
    )
    p.add_argument("--size-mismatch", choices=SIZE_MISMATCH_POLICIES, default="warn")
    p.add_argument("--difficult", choices=DIFFICULT_POLICIES, default="keep")
    return p


@command("voc_to_coco")
def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    # AnnotationError (a BadFileError) and an unwritable --out are one line from @command.
    report = convert_voc(
        args.xml_dir,
        args.image_dir,
        args.out,
        split=args.split,
        classes=args.classes.split(",") if args.classes else None,
        bad_boxes=args.bad_boxes,
        skip_bad_files=args.skip_bad_files,
        size_mismatch=args.size_mismatch,
        difficult=args.difficult,
        bad_images=args.bad_images,
        workers=args.workers,
    )
    print(report.format())
    return 0
