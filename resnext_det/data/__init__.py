"""Data sets: checked COCO registration, Pascal VOC conversion, the generated demo set, and a
DatasetMapper whose image errors name the file.

Every reader raises :class:`AnnotationError` (a ``ValueError``) naming the file, the record and
the field for malformed annotations; the policies are in each module's docstring.
"""

from __future__ import annotations

from .coco import (
    CocoSummary,
    check_dataset_names,
    get_dataset_dicts_checked,
    load_coco_json_checked,
    register_coco_dataset,
    register_from_config,
    validate_coco_dict,
)
from .errors import AnnotationError
from .mapper import CheckedDatasetMapper, ImageReadError
from .synthetic import SYNTHETIC_CLASSES, SyntheticCOCO, make_synthetic_coco
from .voc import (
    VocConversionReport,
    convert_voc,
    parse_voc_xml,
    read_split_file,
    register_raccoon,
)

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
    "read_split_file",
    "register_coco_dataset",
    "register_from_config",
    "register_raccoon",
    "validate_coco_dict",
]
