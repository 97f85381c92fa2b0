"""Pascal VOC files: one XML per image, the bad-box policy, split files, and finding the XMLs and
images of a set.

Coordinates follow detectron2's own VOC loader (``detectron2/data/datasets/pascal_voc.py``): VOC
boxes are 1-based inclusive pixel indices, so ``xmin``/``ymin`` lose 1 and ``xmax``/``ymax`` stay,
giving the box ``[xmin - 1, xmax]`` in 0-based continuous coordinates (``xmin=1, xmax=W`` covers
the whole image). Float coordinates are kept as floats. The conversion to COCO and its policies
for bad data are in :mod:`resnext_det.data.voc_convert`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..reading import read_text_file
from .errors import AnnotationError

__all__ = [
    "BAD_BOX_POLICIES",
    "IMAGE_EXTENSIONS",
    "ImageIndex",
    "VocObject",
    "VocRecord",
    "apply_box_policy",
    "parse_voc_xml",
    "read_split_file",
    "XmlSet",
]

BAD_BOX_POLICIES = ("clip", "drop", "error")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class VocObject:
    """One ``<object>``: ``box`` is (x0, y0, x1, y1) in 0-based continuous coordinates."""

    index: int
    name: str
    xml_box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written in the XML
    box: tuple[float, float, float, float]
    difficult: int = 0
    truncated: int = 0


@dataclass
class VocRecord:
    """One parsed VOC XML."""

    source: str
    filename: str | None
    width: int
    height: int
    objects: list[VocObject]


def _text(el: ET.Element | None, path: str, source: str, required: bool = True) -> str | None:
    node = None if el is None else el.find(path)
    if node is None or node.text is None or not node.text.strip():
        if required:
            what = "missing" if node is None else "empty"
            raise AnnotationError(f"{source}: field '{path}' is {what}")
        return None
    return node.text.strip()


def _number(text: str, field_path: str, source: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise AnnotationError(
            f"{source}: field '{field_path}' must be a number, got {text[:40]!r}"
        ) from None
    if not math.isfinite(v):
        raise AnnotationError(f"{source}: field '{field_path}' must be finite, got {text[:40]!r}")
    return v


def _flag(obj: ET.Element, key: str, where: str, source: str) -> int:
    text = _text(obj, key, source, required=False)
    if text is None:
        return 0
    v = _number(text, f"{where}/{key}", source)
    if v != int(v):
        raise AnnotationError(f"{source}: field '{where}/{key}' must be 0 or 1, got {text!r}")
    return int(v != 0)


def parse_voc_xml(data: str | bytes, source: str) -> VocRecord:
    """Parse the text of one VOC XML.

    Args:
        data: the file's content.
        source: the file name, named in every error.

    Returns:
        A :class:`VocRecord` (boxes shifted to 0-based, not yet checked against the image).

    Raises:
        AnnotationError: not well-formed XML, or a missing/malformed field (named).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        line, col = exc.position
        raise AnnotationError(
            f"{source}: not well-formed XML (line {line}, column {col}): a truncated or non-VOC "
            "file?"
        ) from None
    if root.tag != "annotation":
        raise AnnotationError(
            f"{source}: root element is <{root.tag[:40]}>, expected <annotation> (Pascal VOC)"
        )
    size = root.find("size")
    if size is None:
        raise AnnotationError(f"{source}: field 'size' is missing")
    dims = []
    for key in ("width", "height"):
        text = _text(size, key, source)
        v = _number(text, f"size/{key}", source)
        if v < 0 or v != int(v):
            raise AnnotationError(
                f"{source}: field 'size/{key}' must be a non-negative integer, got {text!r}"
            )
        dims.append(int(v))
    objects = []
    for i, obj in enumerate(root.findall("object")):
        where = f"object[{i}]"
        name = _text(obj, "name", source, required=False)
        if name is None:
            raise AnnotationError(f"{source}: field '{where}/name' is missing or empty")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise AnnotationError(f"{source}: field '{where}/bndbox' ({name!r}) is missing")
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = _text(bndbox, key, source, required=False)
            if text is None:
                raise AnnotationError(f"{source}: field '{where}/bndbox/{key}' is missing or empty")
            coords.append(_number(text, f"{where}/bndbox/{key}", source))
        xmin, ymin, xmax, ymax = coords
        objects.append(
            VocObject(
                index=i,
                name=name,
                xml_box=(xmin, ymin, xmax, ymax),
                # detectron2's pascal_voc.py: 1-based inclusive -> [xmin - 1, xmax] continuous.
                box=(xmin - 1.0, ymin - 1.0, xmax, ymax),
                difficult=_flag(obj, "difficult", where, source),
                truncated=_flag(obj, "truncated", where, source),
            )
        )
    return VocRecord(
        source=source,
        filename=_text(root, "filename", source, required=False),
        width=dims[0],
        height=dims[1],
        objects=objects,
    )


def apply_box_policy(
    obj: VocObject, width: int, height: int, policy: str, source: str
) -> tuple[tuple[float, float, float, float] | None, str]:
    """Check ``obj.box`` against a ``width`` x ``height`` image under ``policy``.

    Returns:
        (the box to keep or None, what happened: "ok", "clipped", "dropped_empty_after_clip",
        "dropped_bad_boxes").

    Raises:
        AnnotationError: ``policy="error"`` and the box is bad.
    """
    if policy not in BAD_BOX_POLICIES:
        raise ValueError(f"bad_boxes must be one of {BAD_BOX_POLICIES}, got {policy!r}")
    x0, y0, x1, y1 = obj.box
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height and x1 > x0 and y1 > y0:
        return obj.box, "ok"
    if policy == "error":
        xmin, ymin, xmax, ymax = obj.xml_box
        problem = "has zero or negative size" if (x1 <= x0 or y1 <= y0) else "is outside the image"
        raise AnnotationError(
            f"{source}: object[{obj.index}] ({obj.name!r}) box {problem}: xmin={xmin:g}, "
            f"ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g} (1-based) in a {width}x{height} image; "
            "use bad_boxes='clip' or 'drop' (--bad-boxes) to repair or skip such boxes"
        )
    if policy == "drop":
        return None, "dropped_bad_boxes"
    c = (min(max(x0, 0.0), width), min(max(y0, 0.0), height))
    c = (*c, min(max(x1, 0.0), width), min(max(y1, 0.0), height))
    if c[2] <= c[0] or c[3] <= c[1]:
        return None, "dropped_empty_after_clip"
    return c, "clipped"


def read_split_file(path: str | os.PathLike) -> list[str]:
    """Image names of a split: one per line (with or without extension; the first
    whitespace-separated token, as in VOC's ImageSets/Main files), or a CSV with a ``filename``
    column. Duplicates are removed, order kept.

    Raises:
        FileNotFoundError: no such file.
        AnnotationError: not UTF-8 text, a CSV without a ``filename`` column or with an empty
            one, or no names.
    """
    path = Path(path)
    text = read_text_file(path, "split file", error=AnnotationError, encoding="utf-8-sig")
    lines = text.splitlines()
    first = lines[0] if lines else ""
    names: list[str] = []
    if "," in first:
        # newline="": csv's own line splitting, so a lone "\r" ends a line as splitlines() does.
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            fields = [f.strip() for f in reader.fieldnames or []]
            if "filename" not in fields:
                raise AnnotationError(
                    f"{path}: a CSV split file needs a 'filename' column; found columns {fields}"
                )
            reader.fieldnames = fields
            for row_no, row in enumerate(reader, start=2):
                name = (row.get("filename") or "").strip()
                if not name:
                    raise AnnotationError(f"{path}: line {row_no}: empty 'filename'")
                names.append(name)
        except csv.Error as exc:
            raise AnnotationError(f"{path}: not a readable CSV split file ({exc})") from None
    else:
        names = [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise AnnotationError(f"{path}: the split file lists no images")
    return list(dict.fromkeys(names))


def _stem(name: str) -> str:
    base = os.path.basename(name)
    root, ext = os.path.splitext(base)
    return (root if ext.lower() in (*IMAGE_EXTENSIONS, ".xml") else base).lower()


def _not_a_folder(path: Path) -> str:
    return "is a file, not a folder" if path.exists() else "does not exist"


class ImageIndex:
    """The files of ``image_dir``, listed once, looked up by name or stem in any letter case."""

    def __init__(self, image_dir: Path):
        if not image_dir.is_dir():
            where = _not_a_folder(image_dir)
            raise FileNotFoundError(f"image directory {str(image_dir)!r} {where}")
        self.dir = image_dir
        self.files = sorted(p.name for p in image_dir.iterdir() if p.is_file())
        self.by_lower: dict[str, str] = {}
        self.by_stem: dict[str, list[str]] = {}
        for f in self.files:
            self.by_lower.setdefault(f.lower(), f)
            if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                self.by_stem.setdefault(os.path.splitext(f)[0].lower(), []).append(f)

    def find(self, xml_path: Path, filename: str | None) -> tuple[str | None, bool]:
        """(image file name or None, whether ``filename`` names another existing file)."""
        by_field = None
        if filename:
            base = os.path.basename(filename)
            by_field = self.by_lower.get(base.lower())
            if by_field is None and _stem(base) in self.by_stem:
                by_field = self.by_stem[_stem(base)][0]
        candidates = self.by_stem.get(xml_path.stem.lower(), [])
        if candidates:
            chosen = by_field if by_field in candidates else candidates[0]
            return chosen, by_field is not None and by_field != chosen
        return by_field, False


class XmlSet:
    """The ``*.xml`` of a directory, each parsed at most once (a parse error is kept, not
    raised, so that it is raised or skipped where the policy decides)."""

    def __init__(self, xml_dir: Path):
        if not xml_dir.is_dir():
            raise FileNotFoundError(f"XML directory {str(xml_dir)!r} {_not_a_folder(xml_dir)}")
        self.dir = xml_dir
        self.files = sorted(
            p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file()
        )
        if not self.files:
            raise AnnotationError(f"{xml_dir}: no .xml files (Pascal VOC annotations) found")
        self._parsed: dict[Path, VocRecord | AnnotationError] = {}

    def parse(self, p: Path) -> VocRecord | AnnotationError:
        if p not in self._parsed:
            try:
                self._parsed[p] = parse_voc_xml(p.read_bytes(), str(p))
            except AnnotationError as exc:
                self._parsed[p] = exc
        return self._parsed[p]

    def class_names(self) -> list[str]:
        # All XMLs, not just the split's, so separately converted splits share category ids.
        names = {
            o.name
            for p in self.files
            if isinstance(r := self.parse(p), VocRecord)
            for o in r.objects
        }
        return sorted(names)

    def select(self, split: list[str], split_path: Any) -> list[Path]:
        """The XMLs of the names in ``split``, by XML file name, else by ``<filename>``."""
        by_stem = {p.stem.lower(): p for p in self.files}
        by_filename: dict[str, Path] | None = None
        selected, missing = [], []
        for name in split:
            p = by_stem.get(_stem(name))
            if p is None:
                if by_filename is None:  # XMLs named unlike their images: match on <filename>
                    by_filename = {}
                    for q in self.files:
                        rec = self.parse(q)
                        if isinstance(rec, VocRecord) and rec.filename:
                            by_filename.setdefault(_stem(rec.filename), q)
                p = by_filename.get(_stem(name))
            if p is None:
                missing.append(name)
            else:
                selected.append(p)
        if missing:
            raise AnnotationError(
                f"{split_path}: {len(missing)} of {len(split)} names have no XML in the XML "
                f"directory (by XML file name or <filename>), e.g. {missing[:5]}"
            )
        return list(dict.fromkeys(selected))
