"""Pascal VOC XML annotations -> COCO json, with an explicit policy for bad data.

Coordinates follow detectron2's own VOC loader (``detectron2/data/datasets/pascal_voc.py``): VOC
boxes are 1-based inclusive pixel indices, so ``xmin``/``ymin`` lose 1 and ``xmax``/``ymax`` stay,
giving the box ``[xmin - 1, xmax]`` in 0-based continuous coordinates (``xmin=1, xmax=W`` covers
the whole image). COCO ``bbox`` is then ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``
and ``area`` its width times height. Float coordinates are kept as floats.

Category ids: the sorted class names -> 1..K. Without ``classes`` the names are collected from
*every* XML in the directory (not only the split's), so a train and a val json converted
separately get the same ids even if a class is missing from one split; ``classes`` fixes the
order explicitly.

Images: an XML's image is found in ``image_dir`` by the XML's own file name (``000005.xml`` ->
``000005.jpg``, any image extension, any letter case: the VOC devkit's and detectron2's convention,
where the annotation id is the image id), else by the XML's ``filename`` field (exact, any case,
or its stem with any image extension). A ``filename`` that names another existing file is counted
(``filename_disagrees``). The size is read from the image header with PIL (no decoding), after
EXIF rotation as detectron2's ``read_image`` applies it, because detectron2 checks the json size
against the image it reads.

Policy for bad data (:class:`AnnotationError`, a ``ValueError``, names the file, object and field):

==========================================  ===================================================
Problem                                     What happens
==========================================  ===================================================
box with zero/negative size, or outside     ``bad_boxes="clip"`` (default): clip to the image,
the image (after the 1-based shift)         drop it if empty (counted: ``clipped``,
                                            ``dropped_empty_after_clip``); ``"drop"``: drop it
                                            (``dropped_bad_boxes``); ``"error"``: raise naming
                                            the file, object index, XML coordinates, image size
XML not well-formed (truncated, not XML),   raise naming the file and the field; with
root not ``annotation``, missing/empty      ``skip_bad_files=True`` skip the file (counted in
``size``/``width``/``height``, ``object``   ``skipped_bad_files``, listed in the report)
without ``name``/``bndbox``/coordinate,
a value that is not a (finite) number
image missing or not readable               the same (raise, or skip with ``skip_bad_files``)
XML size differs from the image's           ``size_mismatch="warn"`` (default): use the image's
(including labelImg's 0x0)                  size, count ``size_mismatch`` and list the files;
                                            boxes are then checked against the image's size;
                                            ``"error"``: raise naming both sizes
class not in ``classes`` (when given)       always raise, naming the class, file and the
                                            allowed classes
``difficult`` objects                       ``difficult="keep"`` (default, as detectron2's VOC
                                            loader trains on them): ``iscrowd`` 0 and
                                            ``"difficult": 1`` recorded in the annotation;
                                            ``"crowd"``: ``iscrowd`` 1 (COCO evaluation ignores
                                            detections matched to them, as VOC's does;
                                            detectron2 does not train on crowd boxes);
                                            ``"drop"``: left out (counted)
two XMLs for one image                      the first is kept, the rest counted
                                            (``duplicate_images``)
image without objects                       kept (a negative image), counted
==========================================  ===================================================
"""

from __future__ import annotations

import csv
import io
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..io import write_json_atomic
from .errors import AnnotationError

__all__ = [
    "BAD_BOX_POLICIES",
    "DIFFICULT_POLICIES",
    "SIZE_MISMATCH_POLICIES",
    "VocConversionReport",
    "VocObject",
    "VocRecord",
    "apply_box_policy",
    "convert_voc",
    "parse_voc_xml",
    "read_split_file",
    "register_raccoon",
]

BAD_BOX_POLICIES = ("clip", "drop", "error")
DIFFICULT_POLICIES = ("keep", "crowd", "drop")
SIZE_MISMATCH_POLICIES = ("warn", "error")
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
        AnnotationError: a CSV without a ``filename`` column or with an empty one, or no names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    lines = text.splitlines()
    first = lines[0] if lines else ""
    names: list[str] = []
    if "," in first:
        reader = csv.DictReader(io.StringIO(text))
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
    else:
        names = [ln.split()[0] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise AnnotationError(f"{path}: the split file lists no images")
    return list(dict.fromkeys(names))


def _stem(name: str) -> str:
    base = os.path.basename(name)
    root, ext = os.path.splitext(base)
    return (root if ext.lower() in (*IMAGE_EXTENSIONS, ".xml") else base).lower()


class _ImageIndex:
    """The files of ``image_dir``, listed once, looked up by name or stem in any letter case."""

    def __init__(self, image_dir: Path):
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image directory {str(image_dir)!r} does not exist")
        self.dir = image_dir
        files = sorted(p.name for p in image_dir.iterdir() if p.is_file())
        self.by_lower: dict[str, str] = {}
        self.by_stem: dict[str, list[str]] = {}
        for f in files:
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


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as detectron2's read_image will see it, from the header only."""
    with Image.open(path) as im:
        w, h = im.size
        try:  # detectron2's _apply_exif_orientation tolerates broken EXIF the same way
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


@dataclass
class VocConversionReport:
    """What :func:`convert_voc` wrote and what it repaired or skipped."""

    out_json: Path
    num_images: int
    num_boxes: int
    num_images_without_objects: int
    categories: list[str]
    per_class: dict[str, int]
    warnings: dict[str, int] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    size_mismatch_files: list[str] = field(default_factory=list)

    def format(self) -> str:
        """A human-readable summary (the tool prints it)."""
        from tabulate import tabulate

        rows = [[c, self.per_class.get(c, 0)] for c in self.categories]
        lines = [
            f"wrote {self.out_json}: {self.num_images} images "
            f"({self.num_images_without_objects} without objects), {self.num_boxes} boxes",
            tabulate(rows, headers=["category", "boxes"], tablefmt="pipe"),
        ]
        if self.warnings:
            lines.append("warnings: " + ", ".join(f"{k}={v}" for k, v in self.warnings.items()))
        if self.skipped_files:
            lines.append(f"skipped files: {self.skipped_files[:10]}")
        if self.size_mismatch_files:
            lines.append(f"XML size differs from the image: {self.size_mismatch_files[:10]}")
        return "\n".join(lines)


def _select(xml_files: list[Path], split: list[str], split_path: Any, parse) -> list[Path]:
    by_stem = {p.stem.lower(): p for p in xml_files}
    by_filename: dict[str, Path] | None = None
    selected, missing = [], []
    for name in split:
        p = by_stem.get(_stem(name))
        if p is None:
            if by_filename is None:  # XMLs named unlike their images: match on <filename>
                by_filename = {}
                for q in xml_files:
                    rec = parse(q)
                    if isinstance(rec, VocRecord) and rec.filename:
                        by_filename.setdefault(_stem(rec.filename), q)
            p = by_filename.get(_stem(name))
        if p is None:
            missing.append(name)
        else:
            selected.append(p)
    if missing:
        raise AnnotationError(
            f"{split_path}: {len(missing)} of {len(split)} names have no XML in the XML directory "
            f"(by XML file name or <filename>), e.g. {missing[:5]}"
        )
    return list(dict.fromkeys(selected))


def convert_voc(
    xml_dir: str | os.PathLike,
    image_dir: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    split: str | os.PathLike | None = None,
    classes: list[str] | tuple[str, ...] | None = None,
    bad_boxes: str = "clip",
    skip_bad_files: bool = False,
    size_mismatch: str = "warn",
    difficult: str = "keep",
) -> VocConversionReport:
    """Convert a directory of Pascal VOC XMLs to one COCO instances json (written atomically).

    Args:
        xml_dir: directory of ``*.xml`` (one per image).
        image_dir: directory of the images; ``file_name`` in the json is relative to it.
        out_json: output path.
        split: optional file naming the images to take (see :func:`read_split_file`); default all.
        classes: class names in category-id order; default the sorted names found in xml_dir.
        bad_boxes, skip_bad_files, size_mismatch, difficult: the policies in the module docstring.

    Returns:
        A :class:`VocConversionReport`.

    Raises:
        AnnotationError: bad data under the chosen policies (file, object and field named).
        FileNotFoundError: a missing directory or split file.
        ValueError: an unknown policy, or empty/duplicate ``classes``.
    """
    for arg, value, allowed in (
        ("bad_boxes", bad_boxes, BAD_BOX_POLICIES),
        ("size_mismatch", size_mismatch, SIZE_MISMATCH_POLICIES),
        ("difficult", difficult, DIFFICULT_POLICIES),
    ):
        if value not in allowed:
            raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
    if classes is not None:
        classes = [c.strip() for c in classes]
        if not classes or not all(classes) or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct non-empty names, got {classes!r}")
    xml_dir, image_dir = Path(xml_dir), Path(image_dir)
    if not xml_dir.is_dir():
        raise FileNotFoundError(f"XML directory {str(xml_dir)!r} does not exist")
    images = _ImageIndex(image_dir)
    xml_files = sorted(p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_files:
        raise AnnotationError(f"{xml_dir}: no .xml files (Pascal VOC annotations) found")

    parsed: dict[Path, VocRecord | AnnotationError] = {}

    def parse(p: Path) -> VocRecord | AnnotationError:
        if p not in parsed:
            try:
                parsed[p] = parse_voc_xml(p.read_bytes(), str(p))
            except AnnotationError as exc:
                parsed[p] = exc
        return parsed[p]

    selected = (
        xml_files if split is None else _select(xml_files, read_split_file(split), split, parse)
    )
    if classes is None:
        # All XMLs, not just the split's, so separately converted splits share category ids.
        names = {
            o.name for p in xml_files if isinstance(r := parse(p), VocRecord) for o in r.objects
        }
        classes = sorted(names)
    cat_id = {c: i + 1 for i, c in enumerate(classes)}

    warnings: Counter[str] = Counter()
    skipped: list[str] = []
    mismatched: list[str] = []
    out_images: list[dict] = []
    out_anns: list[dict] = []
    per_class: Counter[str] = Counter()
    seen_images: set[str] = set()
    for p in _progress(selected):
        rec = parse(p)
        try:
            if isinstance(rec, AnnotationError):
                raise rec
            file_name, disagrees = images.find(p, rec.filename)
            if file_name is None:
                raise AnnotationError(
                    f"{p}: no image for it in {image_dir} (looked for {p.stem}.<image ext> and "
                    f"<filename> {rec.filename!r})"
                )
            try:
                width, height = _image_size(image_dir / file_name)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise AnnotationError(
                    f"{p}: its image {image_dir / file_name} is not readable: {exc}"
                ) from None
        except AnnotationError:
            if not skip_bad_files:
                raise
            warnings["skipped_bad_files"] += 1
            skipped.append(str(p))
            continue
        if file_name in seen_images:
            warnings["duplicate_images"] += 1
            continue
        seen_images.add(file_name)
        warnings["filename_disagrees"] += disagrees
        if (width, height) != (rec.width, rec.height):
            if size_mismatch == "error":
                raise AnnotationError(
                    f"{p}: size in the XML is {rec.width}x{rec.height} but the image "
                    f"{image_dir / file_name} is {width}x{height} (after EXIF rotation); use "
                    "size_mismatch='warn' (--size-mismatch warn) to take the image's size"
                )
            warnings["size_mismatch"] += 1
            mismatched.append(str(p))
        image_id = len(out_images) + 1
        out_images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "voc_xml": p.name,
            }
        )
        n_before = len(out_anns)
        for obj in rec.objects:
            if obj.name not in cat_id:
                raise AnnotationError(
                    f"{p}: object[{obj.index}] has class {obj.name!r}, which is not in the "
                    f"allowed classes {list(classes)}"
                )
            if obj.difficult and difficult == "drop":
                warnings["dropped_difficult"] += 1
                continue
            box, what = apply_box_policy(obj, width, height, bad_boxes, str(p))
            if what != "ok":
                warnings[what] += 1
            if box is None:
                continue
            x0, y0, x1, y1 = box
            out_anns.append(
                {
                    "id": len(out_anns) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[obj.name],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(bool(obj.difficult) and difficult == "crowd"),
                    "difficult": obj.difficult,
                    "truncated": obj.truncated,
                }
            )
            per_class[obj.name] += 1
        warnings["images_without_objects"] += len(out_anns) == n_before
    if not out_images:
        raise AnnotationError(f"{xml_dir}: no image could be converted ({len(skipped)} skipped)")

    data = {
        "info": {"description": f"converted from Pascal VOC XMLs in {xml_dir}"},
        "images": out_images,
        "annotations": out_anns,
        "categories": [{"id": cat_id[c], "name": c, "supercategory": "none"} for c in classes],
    }
    out_json = write_json_atomic(out_json, data)
    return VocConversionReport(
        out_json=out_json,
        num_images=len(out_images),
        num_boxes=len(out_anns),
        num_images_without_objects=warnings["images_without_objects"],
        categories=list(classes),
        per_class={c: per_class[c] for c in classes},
        warnings={k: v for k, v in sorted(warnings.items()) if v},
        skipped_files=skipped,
        size_mismatch_files=mismatched,
    )


def _progress(items: list) -> Any:
    from tqdm import tqdm

    return tqdm(items, desc="VOC XMLs", disable=len(items) < 500, leave=False)


def register_raccoon(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    names: tuple[str, str] = ("raccoon_train", "raccoon_val"),
) -> tuple[VocConversionReport, VocConversionReport]:
    """Convert the raccoon set (Dat Tran's; ``annotations/``, ``images/``, ``train_labels.csv``,
    ``test_labels.csv``) to ``out_dir/raccoon_{train,val}.json`` (its 160/40 split) and register
    both under ``names``.

    Returns:
        The two conversion reports (train, val).
    """
    from .coco import register_coco_dataset

    root, out_dir = Path(root), Path(out_dir)
    reports = []
    for name, split_csv, stem in zip(
        names, ("train_labels.csv", "test_labels.csv"), ("raccoon_train", "raccoon_val")
    ):
        report = convert_voc(
            root / "annotations", root / "images", out_dir / f"{stem}.json", split=root / split_csv
        )
        register_coco_dataset(name, report.out_json, root / "images")
        reports.append(report)
    return reports[0], reports[1]
