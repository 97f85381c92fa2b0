"""Pascal VOC XML annotations -> COCO json, with an explicit policy for bad data.

Boxes: VOC's 1-based inclusive ``[xmin, xmax]`` is ``[xmin - 1, xmax]`` in 0-based continuous
coordinates (:mod:`resnext_det.data.voc`, as detectron2's VOC loader), so COCO ``bbox`` is
``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` and ``area`` its width times height.

Category ids: the sorted class names -> 1..K. Without ``classes`` the names are collected from
*every* XML in the directory (not only the split's), so a train and a val json converted
separately get the same ids even if a class is missing from one split; ``classes`` fixes the
order explicitly.

Images: an XML's image is found in ``image_dir`` by the XML's own file name (``000005.xml`` ->
``000005.jpg``, any image extension, any letter case: the VOC devkit's and detectron2's convention,
where the annotation id is the image id), else by the XML's ``filename`` field (exact, any case,
or its stem with any image extension). A ``filename`` that names another existing file is counted
(``filename_disagrees``). Every image is decoded in full (in parallel, with a progress bar), so a
truncated file fails here and not at some training iteration; its size is taken after EXIF
rotation as detectron2's ``read_image`` applies it, because detectron2 checks the json size
against the image it reads.

Policy for bad data (:class:`AnnotationError`, a ``BadFileError``, names the file, object and
field):

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
image missing                               the same (raise, or skip with ``skip_bad_files``)
image that does not decode (not an image,   ``bad_images="error"`` (default): raise once,
truncated, corrupt) or that detectron2      naming every such image and why; ``"skip"``: leave
would clip to 8 bits (16-bit grey PNG:      them out (``skipped_bad_images``, listed);
:mod:`resnext_det.data.images`)             ``skip_bad_files`` also skips them
                                            (``skipped_bad_files``)
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
``out_json`` a folder, an input file (an    ``ValueError`` / ``PermissionError`` /
XML, image or the split file, also through  ``NotADirectoryError`` naming the path, before any
``..`` or a link), or in a folder that      work
cannot be written
==========================================  ===================================================
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import utf8_name, write_json_atomic
from .errors import AnnotationError
from .images import ImageCheckError, decode_images
from .voc import (
    BAD_BOX_POLICIES,
    ImageIndex,
    VocRecord,
    XmlSet,
    apply_box_policy,
    read_split_file,
)

__all__ = [
    "BAD_BOX_POLICIES",
    "BAD_IMAGE_POLICIES",
    "DIFFICULT_POLICIES",
    "SIZE_MISMATCH_POLICIES",
    "VocConversionReport",
    "check_output_path",
    "convert_voc",
]

DIFFICULT_POLICIES = ("keep", "crowd", "drop")
SIZE_MISMATCH_POLICIES = ("warn", "error")
BAD_IMAGE_POLICIES = ("error", "skip")


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


@dataclass
class _Located:
    """An XML whose image was found: what the conversion steps carry along."""

    xml: Path
    record: VocRecord
    file_name: str
    filename_disagrees: bool


@dataclass
class _Tally:
    warnings: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def skip(self, xml: Path, counter: str) -> None:
        self.warnings[counter] += 1
        self.skipped.append(str(xml))


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check, before any work, that a file can be written at ``path`` without destroying input.

    Raises:
        ValueError: ``path`` is a folder, or one of ``inputs`` (also through ``..`` or a link).
        NotADirectoryError: a parent of ``path`` is a file.
        PermissionError: the folder it would be written in (or created under) is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {str(path)!r} is a folder; give the path of the file to write")
    if os.path.exists(path):  # only an existing file can be an input; stat the inputs then
        for p in inputs:
            if os.path.samefile(p, path):
                raise ValueError(
                    f"output {str(path)!r} is the input file {os.fspath(p)!r}; writing it would "
                    "destroy the input: choose another path"
                )
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"output {str(path)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"output {str(path)!r}: the folder {str(parent)!r} is not writable (read-only "
            "folder or file system)"
        )
    return path


def _locate_images(
    selected: list[Path], xmls: XmlSet, images: ImageIndex, skip_bad_files: bool, tally: _Tally
) -> list[_Located]:
    """Step 1: each XML parsed and its image found (bad XMLs raised or skipped)."""
    located = []
    for p in selected:
        rec = xmls.parse(p)
        try:
            if isinstance(rec, AnnotationError):
                raise rec
            file_name, disagrees = images.find(p, rec.filename)
            if file_name is None:
                raise AnnotationError(
                    f"{p}: no image for it in {images.dir} (looked for {p.stem}.<image ext> and "
                    f"<filename> {rec.filename!r})"
                )
            if not utf8_name(file_name):
                raise AnnotationError(
                    f"{os.fsencode(images.dir / file_name)!r}: the image's name is not valid "
                    "UTF-8, which the COCO json cannot hold; rename it"
                )
        except AnnotationError:
            if not skip_bad_files:
                raise
            tally.skip(p, "skipped_bad_files")
            continue
        located.append(_Located(p, rec, file_name, disagrees))
    return located


def _apply_bad_image_policy(
    located: list[_Located],
    decoded: dict[Path, tuple[int, int] | ImageCheckError],
    image_dir: Path,
    bad_images: str,
    skip_bad_files: bool,
    tally: _Tally,
) -> list[tuple[_Located, tuple[int, int]]]:
    """Step 3: the images that did not decode, all named in one error, or skipped."""
    good, bad = [], []
    for loc in located:
        r = decoded[image_dir / loc.file_name]
        if isinstance(r, ImageCheckError):
            bad.append((loc, r))
        else:
            good.append((loc, r))
    if bad and bad_images == "error" and not skip_bad_files:
        lines = [f"{loc.xml}: its image {exc.path} {exc.reason}" for loc, exc in bad]
        raise AnnotationError(
            f"{len(bad)} of {len(located)} images cannot be used (bad_images='error'; "
            "bad_images='skip' leaves them out):\n  " + "\n  ".join(lines)
        )
    for loc, _ in bad:
        tally.skip(loc.xml, "skipped_bad_images" if bad_images == "skip" else "skipped_bad_files")
    return good


def _annotations(
    loc: _Located,
    size: tuple[int, int],
    image_id: int,
    first_ann_id: int,
    cat_id: dict[str, int],
    bad_boxes: str,
    difficult: str,
    tally: _Tally,
) -> list[dict]:
    """The COCO annotations of one image, under the box and difficult policies."""
    width, height = size
    anns = []
    for obj in loc.record.objects:
        if obj.name not in cat_id:
            raise AnnotationError(
                f"{loc.xml}: object[{obj.index}] has class {obj.name!r}, which is not in the "
                f"allowed classes {list(cat_id)}"
            )
        if obj.difficult and difficult == "drop":
            tally.warnings["dropped_difficult"] += 1
            continue
        box, what = apply_box_policy(obj, width, height, bad_boxes, str(loc.xml))
        if what != "ok":
            tally.warnings[what] += 1
        if box is None:
            continue
        x0, y0, x1, y1 = box
        anns.append(
            {
                "id": first_ann_id + len(anns),
                "image_id": image_id,
                "category_id": cat_id[obj.name],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": int(bool(obj.difficult) and difficult == "crowd"),
                "difficult": obj.difficult,
                "truncated": obj.truncated,
            }
        )
    return anns


def _coco_records(
    images: list[tuple[_Located, tuple[int, int]]],
    classes: list[str],
    *,
    image_dir: Path,
    bad_boxes: str,
    size_mismatch: str,
    difficult: str,
    tally: _Tally,
) -> tuple[list[dict], list[dict]]:
    """Step 4: the COCO images and annotations (duplicates, size mismatches, boxes)."""
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    out_images: list[dict] = []
    out_anns: list[dict] = []
    seen: set[str] = set()
    for loc, (width, height) in images:
        if loc.file_name in seen:
            tally.warnings["duplicate_images"] += 1
            continue
        seen.add(loc.file_name)
        tally.warnings["filename_disagrees"] += loc.filename_disagrees
        rec = loc.record
        if (width, height) != (rec.width, rec.height):
            if size_mismatch == "error":
                raise AnnotationError(
                    f"{loc.xml}: size in the XML is {rec.width}x{rec.height} but the image "
                    f"{image_dir / loc.file_name} is {width}x{height} (after EXIF rotation); use "
                    "size_mismatch='warn' (--size-mismatch warn) to take the image's size"
                )
            tally.warnings["size_mismatch"] += 1
            tally.mismatched.append(str(loc.xml))
        image_id = len(out_images) + 1
        out_images.append(
            {
                "id": image_id,
                "file_name": loc.file_name,
                "width": width,
                "height": height,
                "voc_xml": loc.xml.name,
            }
        )
        anns = _annotations(
            loc, (width, height), image_id, len(out_anns) + 1, cat_id, bad_boxes, difficult, tally
        )
        out_anns += anns
        tally.warnings["images_without_objects"] += not anns
    return out_images, out_anns


def _check_arguments(
    bad_boxes: str, size_mismatch: str, difficult: str, bad_images: str, classes: Any
) -> list[str] | None:
    for arg, value, allowed in (
        ("bad_boxes", bad_boxes, BAD_BOX_POLICIES),
        ("size_mismatch", size_mismatch, SIZE_MISMATCH_POLICIES),
        ("difficult", difficult, DIFFICULT_POLICIES),
        ("bad_images", bad_images, BAD_IMAGE_POLICIES),
    ):
        if value not in allowed:
            raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")
    if classes is None:
        return None
    classes = [c.strip() for c in classes]
    if not classes or not all(classes) or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct non-empty names, got {classes!r}")
    return classes


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
    bad_images: str = "error",
    workers: int | None = None,
    progress: bool = True,
) -> VocConversionReport:
    """Convert a directory of Pascal VOC XMLs to one COCO instances json (written atomically).

    Args:
        xml_dir: directory of ``*.xml`` (one per image).
        image_dir: directory of the images; ``file_name`` in the json is relative to it.
        out_json: output path (checked before any work: see the module docstring).
        split: optional file naming the images to take (see :func:`read_split_file`); default all.
        classes: class names in category-id order; default the sorted names found in xml_dir.
        bad_boxes, skip_bad_files, size_mismatch, difficult, bad_images: the policies in the
            module docstring.
        workers: threads that decode images (default: the CPU count, at most 8).
        progress: a progress bar while decoding (shown on a terminal only).

    Returns:
        A :class:`VocConversionReport`.

    Raises:
        AnnotationError: bad data under the chosen policies (file, object and field named).
        FileNotFoundError: a missing directory or split file.
        ValueError: an unknown policy, empty/duplicate ``classes``, or a bad ``out_json``.
        OSError: ``out_json`` cannot be written (``PermissionError``, ``NotADirectoryError``,
            :class:`resnext_det.io.AtomicWriteError`).
    """
    classes = _check_arguments(bad_boxes, size_mismatch, difficult, bad_images, classes)
    xml_dir, image_dir = Path(xml_dir), Path(image_dir)
    xmls = XmlSet(xml_dir)
    images = ImageIndex(image_dir)
    inputs = [*xmls.files, *(image_dir / f for f in images.files), *([split] if split else [])]
    check_output_path(out_json, inputs)
    selected = xmls.files if split is None else xmls.select(read_split_file(split), split)
    classes = xmls.class_names() if classes is None else classes

    tally = _Tally()
    located = _locate_images(selected, xmls, images, skip_bad_files, tally)
    paths = list(dict.fromkeys(image_dir / loc.file_name for loc in located))
    decoded = decode_images(paths, workers, progress)
    usable = _apply_bad_image_policy(located, decoded, image_dir, bad_images, skip_bad_files, tally)
    out_images, out_anns = _coco_records(
        usable,
        classes,
        image_dir=image_dir,
        bad_boxes=bad_boxes,
        size_mismatch=size_mismatch,
        difficult=difficult,
        tally=tally,
    )
    if not out_images:
        raise AnnotationError(
            f"{xml_dir}: no image could be converted ({len(tally.skipped)} skipped)"
        )
    data = {
        "info": {"description": f"converted from Pascal VOC XMLs in {xml_dir}"},
        "images": out_images,
        "annotations": out_anns,
        "categories": [
            {"id": i + 1, "name": c, "supercategory": "none"} for i, c in enumerate(classes)
        ],
    }
    out_json = write_json_atomic(out_json, data)
    per_class = Counter(classes[a["category_id"] - 1] for a in out_anns)
    return VocConversionReport(
        out_json=out_json,
        num_images=len(out_images),
        num_boxes=len(out_anns),
        num_images_without_objects=tally.warnings["images_without_objects"],
        categories=list(classes),
        per_class={c: per_class[c] for c in classes},
        warnings={k: v for k, v in sorted(tally.warnings.items()) if v},
        skipped_files=tally.skipped,
        size_mismatch_files=tally.mismatched,
    )
