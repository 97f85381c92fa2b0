"""Names users give (models, paths, categories) as report text: checked, and escaped for
markdown, matplotlib and spreadsheets."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

__all__ = ["check_model_names", "csv_cell", "markdown_text"]

_LABELS = {"AP50": "AP@0.5", "AP75": "AP@0.75"}
# `*`: the interval of a difference excludes 0 and covers test images and training runs.
# `†`: it excludes 0 but covers test images only (a model with one run): not a finding.
FINDING, IMAGES_ONLY = "*", "†"


def check_model_names(names: Any) -> None:
    """Refuse model names that a report cannot show as given: not a string, empty, or holding
    control characters or line breaks (a newline would start a new markdown line, a heading).
    Everything else is shown escaped (:func:`markdown_text`) and made a file name by
    :func:`resnext_det.io.file_name_for`."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a model name must be a non-empty string; got {name!r}")
        bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
        if bad:
            raise ValueError(
                f"model name {name!r} holds control characters or line breaks "
                f"({', '.join(repr(c) for c in bad)}); names go into reports and file names: use "
                "letters, digits, spaces and punctuation"
            )


# A text cell that starts like a formula (OWASP's CSV-injection list) is one to a spreadsheet.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: None as empty, text that a spreadsheet would run as a formula
    (``=HYPERLINK(...)``, ``@SUM(...)``) with a leading apostrophe, which shows it as the text it
    is; numbers, negative ones too, as they are."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


# Characters markdown (CommonMark + GitHub's tables, strikethrough and math) gives a meaning
# anywhere in a line. ("_" only where it can open or close emphasis: see markdown_text.)
_MD_PUNCTUATION = frozenset("\\`*[]|~$#")  # ( ) ! { } mean nothing once [ ] are escaped
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_text(text: Any) -> str:
    """``text`` (a name, a path, a category: anything a user gave) as literal markdown:
    punctuation backslash-escaped (``|`` no longer ends a table cell, ``#`` starts no heading),
    ``&<>`` as entities (``<script>`` is text), control characters written as escapes
    (``\\n``), so it renders as given and stays on its line. An ``_`` between two letters or
    digits (``results_R_run1.json``) cannot start emphasis in CommonMark and stays as it is."""
    text = str(text)
    out = []
    for i, ch in enumerate(text):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_PUNCTUATION:
            out.append("\\" + ch)
        elif ch == "_":
            inside = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append("_" if inside else "\\_")
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _plain(text: Any) -> str:
    return str(text)


def _mpl_text(text: Any) -> str:
    # matplotlib reads $...$ as math (an unbalanced "$" in a name fails the whole figure).
    return str(text).replace("$", r"\$")


def _fmt(x: Any, digits: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
