"""Data sets: checked COCO registration, Pascal VOC conversion, the generated demo set, the raccoon
set, and a DatasetMapper whose image errors name the file.

Every reader raises :class:`AnnotationError` (a :class:`~resnext_det.errors.BadFileError`) naming
the file, the record and the field for malformed annotations; the policies are in each module's
docstring (COCO: :mod:`.coco`, VOC: :mod:`.voc_convert`, images: :mod:`.images`).
"""

from __future__ import annotations

from .catalog import (
    check_dataset_names,
    get_dataset_dicts_checked,
    register_coco_dataset,
    register_from_config,
)
from .coco import CocoSummary, load_coco_json_checked, read_json_file, validate_coco_dict
from .errors import AnnotationError
from .mapper import CheckedDatasetMapper, ImageReadError
from .raccoon import register_raccoon
from .synthetic import SYNTHETIC_CLASSES, SyntheticCOCO, make_synthetic_coco
from .voc import parse_voc_xml, read_split_file
from .voc_convert import VocConversionReport, convert_voc

__all__ = [
    "SYNTHETIC_CLASSES",
    "AnnotationError",
    "CheckedDatasetMapper",
    "CocoSummary",
    "ImageReadError",
    "SyntheticCOCO",
    "VocConversionReport",
    "check_dataset_names",
    "convert_voc",
    "get_dataset_dicts_checked",
    "load_coco_json_checked",
    "make_synthetic_coco",
    "parse_voc_xml",
    "read_json_file",
    "read_split_file",
    "register_coco_dataset",
    "register_from_config",
    "register_raccoon",
    "validate_coco_dict",
]
