"""Reading the text and json files users give: one reader, every failure named.

A user's file (a config, annotations, a split list, results, a weights sidecar) that cannot be read
is reported with the file, what it was meant to be, and where the problem is: the byte that is not
UTF-8, the line and column of a json error. Each caller passes the error type it raises for its
kind of file (``ConfigError``, ``AnnotationError``, ...), so its users catch what they did before.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import sys
from pathlib import Path
from typing import Any

from .errors import BadFileError

__all__ = ["INT64", "is_int", "read_json_file", "read_text_file"]

# Ids and sizes end up in int64 arrays (detectron2, pycocotools, the evaluator).
INT64 = (-(2**63), 2**63)


def is_int(v: Any) -> bool:
    """An integer as json (or numpy, in a dict built in Python) gives it, within int64; not a
    bool, not a float with an integral value."""
    return (
        isinstance(v, numbers.Integral)
        and not isinstance(v, bool)
        and INT64[0] <= int(v) < INT64[1]
    )


def read_text_file(
    path: str | os.PathLike,
    what: str = "text file",
    *,
    error: type[Exception] = BadFileError,
    encoding: str = "utf-8",
) -> str:
    """The text of a UTF-8 file (``encoding="utf-8-sig"`` also drops a byte-order mark).

    Raises:
        FileNotFoundError: no such file.
        error: a folder, or a byte that is not UTF-8 (its offset and the reason named).
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise error(f"{what} {path}: is a folder, not a file")
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})"
        ) from None


def _line_col(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return f"line {line}, column {column}"


def _deep_nesting_at(text: str, limit: int) -> int | None:
    """Offset of the first bracket nested deeper than ``limit`` (outside strings), or None."""
    depth, in_string, escaped = 0, False, False
    for k, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return k
        elif ch in "]}":
            depth -= 1
    return None


def read_json_file(
    path: str | os.PathLike, what: str = "json file", *, error: type[Exception] = BadFileError
) -> Any:
    """Parse a json file, with every failure named: the file, and the line and column where the
    problem is (a byte that is not UTF-8, a syntax error, nesting Python's reader cannot follow,
    an integer longer than Python converts).

    Args:
        path: the file.
        what: what the file is, for the messages ("COCO annotation file", "results file").
        error: the type to raise for a file that is not valid json.

    Raises:
        FileNotFoundError: no such file.
        error: a folder, or not valid UTF-8 json.
    """
    path = Path(path)
    text = read_text_file(path, what, error=error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{path}: not valid json (line {exc.lineno}, column {exc.colno}: {exc.msg}); a "
            "truncated or non-COCO file?"
        ) from None
    except RecursionError:
        at = _deep_nesting_at(text, 100)
        where = f" (deeper than 100 levels from {_line_col(text, at)})" if at is not None else ""
        raise error(
            f"{path}: json nested too deeply for Python's json reader{where}; COCO files are "
            "a few levels deep"
        ) from None
    except ValueError as exc:  # not a JSONDecodeError: Python's limit on integer digits
        limit = sys.get_int_max_str_digits()
        m = re.search(rf"\d{{{limit + 1},}}", text) if limit else None
        if m is None:
            raise error(f"{path}: not valid json ({exc})") from None
        raise error(
            f"{path}: {_line_col(text, m.start())}: an integer of {len(m.group())} digits; Python "
            f"reads at most {limit} (ids and sizes must fit in 64 bits)"
        ) from None
