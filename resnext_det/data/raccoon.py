"""The raccoon set (Dat Tran's 200 images, Pascal VOC XMLs): converted and registered.

The set's layout is ``annotations/*.xml``, ``images/*.jpg`` and its own 160/40 split as
``train_labels.csv`` / ``test_labels.csv`` (one row per box, a ``filename`` column).
"""

from __future__ import annotations

import os
from pathlib import Path

from .catalog import register_coco_dataset
from .voc_convert import VocConversionReport, convert_voc

__all__ = ["RACCOON_SPLITS", "register_raccoon"]

# (split csv, json stem) for train and val.
RACCOON_SPLITS = (("train_labels.csv", "raccoon_train"), ("test_labels.csv", "raccoon_val"))


def register_raccoon(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    names: tuple[str, str] = ("raccoon_train", "raccoon_val"),
) -> tuple[VocConversionReport, VocConversionReport]:
    """Convert the raccoon set at ``root`` to ``out_dir/raccoon_{train,val}.json`` (its 160/40
    split) and register both under ``names``.

    Returns:
        The two conversion reports (train, val).
    """
    root, out_dir = Path(root), Path(out_dir)
    reports = []
    for name, (split_csv, stem) in zip(names, RACCOON_SPLITS):
        report = convert_voc(
            root / "annotations", root / "images", out_dir / f"{stem}.json", split=root / split_csv
        )
        register_coco_dataset(name, report.out_json, root / "images")
        reports.append(report)
    return reports[0], reports[1]
