"""Error types shared by the annotation readers."""

from __future__ import annotations


class AnnotationError(ValueError):
    """An annotation file (VOC XML, COCO json) is malformed or holds a bad value.

    The message always names the file, and where it applies the record (annotation id, object
    index) and the field, with the value found and what is allowed.
    """
