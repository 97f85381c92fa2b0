"""Error types shared by the annotation and image readers."""

from __future__ import annotations

from ..errors import BadFileError


class AnnotationError(BadFileError):
    """An annotation file (VOC XML, COCO json, split file) or one of its images is malformed or
    holds a bad value.

    The message always names the file, and where it applies the record (annotation id, object
    index) and the field, with the value found and what is allowed.
    """
