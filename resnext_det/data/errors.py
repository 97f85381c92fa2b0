"""Error types and the atomic writer shared by the annotation readers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class AnnotationError(ValueError):
    """An annotation file (VOC XML, COCO json) is malformed or holds a bad value.

    The message always names the file, and where it applies the record (annotation id, object
    index) and the field, with the value found and what is allowed.
    """


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as json to ``path`` through a temporary file in the same directory and
    ``os.replace``, so a reader never sees half a file (an interrupted run leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # Fixed key order and separators: the same data gives byte-identical files.
            json.dump(data, f, separators=(",", ":"), ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Like :func:`write_json_atomic`, for bytes (images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
