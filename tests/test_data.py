"""Data sets: VOC conversion (checked against detectron2's own VOC loader and pycocotools), the
bad-data policies, checked COCO registration, the generated demo set, and the mapper's errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import RACCOON, REPO
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from resnext_det import add_resnext_config
from resnext_det.data import (
    AnnotationError,
    CheckedDatasetMapper,
    ImageReadError,
    check_dataset_names,
    convert_voc,
    get_dataset_dicts_checked,
    load_coco_json_checked,
    make_synthetic_coco,
    read_split_file,
    register_coco_dataset,
    register_from_config,
    register_raccoon,
    validate_coco_dict,
)
from resnext_det.data import catalog as catalog_mod
from resnext_det.errors import ResNeXtDetError

needs_raccoon = pytest.mark.skipif(
    not (RACCOON / "annotations").is_dir(), reason="shared raccoon data not present"
)


def _coco(json_file: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(json_file))


@pytest.fixture
def names():
    """Unique data set names, unregistered after the test (the catalogs are process-global)."""
    made: list[str] = []

    def make(prefix: str = "t") -> str:
        made.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield make
    for n in made:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
        catalog_mod._REGISTERED.pop(n, None)


# ------------------------------------------------------------------------------------------------
# VOC -> COCO on the raccoon set
# ------------------------------------------------------------------------------------------------


def _xml_boxes(xml_path: Path) -> list[tuple[float, ...]]:
    root = ET.parse(xml_path).getroot()
    return [
        tuple(float(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax"))
        for o in root.findall("object")
    ]


@needs_raccoon
def test_raccoon_all_xmls(tmp_path):
    xmls = sorted((RACCOON / "annotations").glob("*.xml"))
    report = convert_voc(RACCOON / "annotations", RACCOON / "images", tmp_path / "all.json")
    n_boxes = sum(len(_xml_boxes(p)) for p in xmls)
    assert (report.num_images, report.num_boxes) == (200, n_boxes) == (200, 217)
    assert report.warnings == {} and report.categories == ["raccoon"]

    coco = _coco(report.out_json)
    assert len(coco.getImgIds()) == 200 and len(coco.getAnnIds()) == n_boxes
    for img in coco.loadImgs(coco.getImgIds()):
        ann_ids = coco.getAnnIds(imgIds=[img["id"]])
        xml_boxes = _xml_boxes(RACCOON / "annotations" / img["voc_xml"])
        assert len(ann_ids) == len(xml_boxes)
        with Image.open(RACCOON / "images" / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"])
        for ann, (xmin, ymin, xmax, ymax) in zip(coco.loadAnns(ann_ids), xml_boxes):
            x, y, w, h = ann["bbox"]
            # VOC is 1-based inclusive: [xmin - 1, xmax] in 0-based continuous coordinates.
            assert (x, y, x + w, y + h) == (xmin - 1, ymin - 1, xmax, ymax)
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            assert ann["area"] == pytest.approx(w * h) and ann["iscrowd"] == 0


@needs_raccoon
def test_raccoon_csv_splits(tmp_path):
    files = {}
    for split, csv_name, n in (("train", "train_labels.csv", 160), ("test", "test_labels.csv", 40)):
        r = convert_voc(
            RACCOON / "annotations",
            RACCOON / "images",
            tmp_path / f"{split}.json",
            split=RACCOON / csv_name,
        )
        coco = _coco(r.out_json)
        files[split] = {im["file_name"] for im in coco.loadImgs(coco.getImgIds())}
        with open(RACCOON / csv_name) as f:
            rows = list(csv.DictReader(f))
        assert r.num_images == n == len(files[split]) == len({row["filename"] for row in rows})
        assert files[split] == {row["filename"] for row in rows}
        # The CSV has one row per box: its boxes are the XML's, so the json matches them too.
        assert r.num_boxes == len(rows)
    assert not files["train"] & files["test"] and len(files["train"] | files["test"]) == 200


@needs_raccoon
def test_raccoon_matches_detectron2_voc_loader(tmp_path, monkeypatch):
    """Our boxes and sizes equal detectron2's own load_voc_instances on the same XMLs."""
    from detectron2.data.datasets.pascal_voc import load_voc_instances

    # detectron2 0.6 uses np.str, which numpy >= 1.24 removed.
    monkeypatch.setattr(np, "str", str, raising=False)
    ids = [f"raccoon-{i}" for i in (1, 2, 10, 27, 53, 100, 150, 199, 200)]
    voc = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for i in ids:
        (voc / "Annotations" / f"{i}.xml").symlink_to(RACCOON / "annotations" / f"{i}.xml")
        (voc / "JPEGImages" / f"{i}.jpg").symlink_to(RACCOON / "images" / f"{i}.jpg")
    (voc / "ImageSets/Main/val.txt").write_text("\n".join(ids) + "\n")
    theirs = {d["image_id"]: d for d in load_voc_instances(str(voc), "val", ["raccoon"])}

    split = tmp_path / "ids.txt"
    split.write_text("\n".join(ids) + "\n")
    report = convert_voc(
        RACCOON / "annotations", RACCOON / "images", tmp_path / "o.json", split=split
    )
    coco = _coco(report.out_json)
    assert report.num_images == len(ids)
    for img in coco.loadImgs(coco.getImgIds()):
        ref = theirs[Path(img["file_name"]).stem]
        assert (img["height"], img["width"]) == (ref["height"], ref["width"])
        ours = [
            BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
            for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        ]
        assert ours == [a["bbox"] for a in ref["annotations"]]


@needs_raccoon
def test_register_raccoon_loads_through_detectron2(tmp_path, names):
    train, val = names("raccoon_train"), names("raccoon_val")
    rt, rv = register_raccoon(RACCOON, tmp_path, names=(train, val))
    assert (rt.num_images, rv.num_images) == (160, 40)
    dicts = get_dataset_dicts_checked(train)
    assert len(dicts) == 160 and MetadataCatalog.get(train).thing_classes == ["raccoon"]
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0}


# ------------------------------------------------------------------------------------------------
# VOC edge cases and the bad-data policy, on small hand-written sets
# ------------------------------------------------------------------------------------------------


def _voc_xml(
    filename: str | None = "a.jpg",
    size: tuple[int, int] | None = (40, 30),
    objects: list[dict] | None = None,
) -> str:
    """A VOC XML; each object dict: name, box (xmin, ymin, xmax, ymax), optional difficult."""
    parts = ["<annotation>", "<folder>images</folder>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height>")
        parts.append("<depth>3</depth></size>")
    for o in objects or []:
        parts.append(f"<object><name>{o['name']}</name><pose>Unspecified</pose>")
        parts.append(f"<truncated>{o.get('truncated', 0)}</truncated>")
        parts.append(f"<difficult>{o.get('difficult', 0)}</difficult>")
        if "box" in o:
            b = dict(zip(("xmin", "ymin", "xmax", "ymax"), o["box"]))
            parts.append("<bndbox>" + "".join(f"<{k}>{v}</{k}>" for k, v in b.items()))
            parts.append("</bndbox>")
        parts.append("</object>")
    parts.append("</annotation>")
    return "\n".join(parts)


def _voc_set(tmp_path: Path, files: dict[str, str], images: dict[str, tuple[int, int]]):
    xml_dir, img_dir = tmp_path / "xml", tmp_path / "img"
    xml_dir.mkdir(exist_ok=True)
    img_dir.mkdir(exist_ok=True)
    for name, text in files.items():
        (xml_dir / name).write_text(text)
    for name, (w, h) in images.items():
        Image.new("RGB", (w, h), (90, 120, 30)).save(img_dir / name)
    return xml_dir, img_dir


def _boxes(json_file: Path) -> list[list[float]]:
    return [a["bbox"] for a in json.loads(json_file.read_text())["annotations"]]


def test_voc_real_world_variants(tmp_path):
    """filename disagreeing with the XML name, missing filename, .JPG, no objects, floats, pose,
    and a split file of names without extension."""
    obj = {"name": "cat", "box": (1, 1, 10, 10)}
    xml_dir, img_dir = _voc_set(
        tmp_path,
        {
            "a.xml": _voc_xml("a.jpg", objects=[obj]),
            "b.xml": _voc_xml("old_name.jpg", objects=[{"name": "dog", "box": (2.5, 3, 20.25, 9)}]),
            "c.xml": _voc_xml(None, objects=[obj]),
            "d.xml": _voc_xml("d.jpg", objects=[obj]),  # the file is d.JPG
            "e.xml": _voc_xml("e.jpg", objects=[]),
        },
        {
            "a.jpg": (40, 30),
            "b.jpg": (40, 30),
            "c.png": (40, 30),
            "d.JPG": (40, 30),
            "e.jpg": (40, 30),
            "old_name.jpg": (40, 30),
        },
    )
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json")
    data = json.loads((tmp_path / "o.json").read_text())
    assert [im["file_name"] for im in data["images"]] == [
        "a.jpg",
        "b.jpg",
        "c.png",
        "d.JPG",
        "e.jpg",
    ]
    assert r.warnings == {"filename_disagrees": 1, "images_without_objects": 1}
    assert r.categories == ["cat", "dog"] and r.per_class == {"cat": 3, "dog": 1}
    assert data["annotations"][1]["bbox"] == [1.5, 2.0, 18.75, 7.0]  # floats kept
    assert [c["id"] for c in data["categories"]] == [1, 2]

    split = tmp_path / "split.txt"
    split.write_text("e\nd.JPG\n# a comment\na\n")
    r = convert_voc(xml_dir, img_dir, tmp_path / "s.json", split=split)
    data = json.loads((tmp_path / "s.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["e.jpg", "d.JPG", "a.jpg"]
    # Category ids come from every XML, so a split without dogs still has dog = 2.
    assert r.categories == ["cat", "dog"] and r.per_class == {"cat": 2, "dog": 0}

    r = convert_voc(xml_dir, img_dir, tmp_path / "k.json", classes=["dog", "cat"])
    assert {
        a["category_id"] for a in json.loads((tmp_path / "k.json").read_text())["annotations"]
    } == {1, 2}
    assert r.per_class == {"dog": 1, "cat": 3}

    split.write_text("a\nnope\n")
    with pytest.raises(AnnotationError, match=r"split.txt: 1 of 2 names have no XML.*'nope'"):
        convert_voc(xml_dir, img_dir, tmp_path / "s.json", split=split)


def test_voc_split_matches_xml_by_filename_field(tmp_path):
    xml_dir, img_dir = _voc_set(
        tmp_path,
        {"ann_0001.xml": _voc_xml("IMG_1.jpg", objects=[{"name": "cat", "box": (1, 1, 5, 5)}])},
        {"IMG_1.jpg": (40, 30)},
    )
    (tmp_path / "s.csv").write_text("filename,class\nIMG_1.jpg,cat\nIMG_1.jpg,cat\n")
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", split=tmp_path / "s.csv")
    assert r.num_images == 1 and r.num_boxes == 1


BAD_BOXES = [
    {"name": "cat", "box": (1, 1, 40, 30)},  # the whole image: fine
    {"name": "cat", "box": (0, 5, 45, 10)},  # xmin 0 (-> -1) and xmax > W: clipped
    {"name": "cat", "box": (50, 5, 60, 10)},  # entirely outside: empty after clipping
    {"name": "cat", "box": (20, 5, 10, 10)},  # negative width
    {"name": "cat", "box": (20, 5, 20, 10)},  # one pixel wide in VOC's 1-based pixels: fine
]


@pytest.mark.parametrize(
    "policy, expected_boxes, warnings",
    [
        (
            "clip",
            [[0.0, 0.0, 40.0, 30.0], [0.0, 4.0, 40.0, 6.0], [19.0, 4.0, 1.0, 6.0]],
            {"clipped": 1, "dropped_empty_after_clip": 2},
        ),
        ("drop", [[0.0, 0.0, 40.0, 30.0], [19.0, 4.0, 1.0, 6.0]], {"dropped_bad_boxes": 3}),
    ],
)
def test_voc_bad_boxes_clip_and_drop(tmp_path, policy, expected_boxes, warnings):
    xml_dir, img_dir = _voc_set(
        tmp_path, {"a.xml": _voc_xml(objects=BAD_BOXES)}, {"a.jpg": (40, 30)}
    )
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", bad_boxes=policy)
    assert _boxes(tmp_path / "o.json") == expected_boxes
    assert r.warnings == warnings and r.num_boxes == len(expected_boxes)


def test_voc_bad_boxes_error(tmp_path):
    xml_dir, img_dir = _voc_set(
        tmp_path, {"a.xml": _voc_xml(objects=BAD_BOXES)}, {"a.jpg": (40, 30)}
    )
    with pytest.raises(
        AnnotationError,
        match=r"a\.xml: object\[1\] \('cat'\) box is outside the image: xmin=0, ymin=5, xmax=45, "
        r"ymax=10 \(1-based\) in a 40x30 image",
    ):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json", bad_boxes="error")
    xml_dir, img_dir = _voc_set(
        tmp_path, {"a.xml": _voc_xml(objects=BAD_BOXES[3:4])}, {"a.jpg": (40, 30)}
    )
    with pytest.raises(AnnotationError, match=r"object\[0\].*zero or negative size: xmin=20"):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json", bad_boxes="error")
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    "text, match",
    [
        (
            _voc_xml(objects=[{"name": "cat", "box": (1, 1, 5, 5)}])[:90],
            r"bad\.xml: not well-formed",
        ),
        ("\x89PNG\r\n\x1a\n binary", r"bad\.xml: not well-formed XML \(line 1"),
        ("<html><body/></html>", r"bad\.xml: root element is <html>, expected <annotation>"),
        (_voc_xml(size=None), r"bad\.xml: field 'size' is missing"),
        (_voc_xml().replace("<height>30</height>", ""), r"bad\.xml: field 'height' is missing"),
        (
            _voc_xml().replace("<width>40</width>", "<width>4x</width>"),
            r"bad\.xml: field 'size/width' must be a number, got '4x'",
        ),
        (
            _voc_xml(objects=[{"name": "cat"}]),
            r"bad\.xml: field 'object\[0\]/bndbox' \('cat'\) is miss",
        ),
        (
            _voc_xml(objects=[{"name": "", "box": (1, 1, 2, 2)}]),
            r"bad\.xml: field 'object\[0\]/name' is missing or empty",
        ),
        (
            _voc_xml(objects=[{"name": "c", "box": (1, 1, 2, 2)}]).replace("<ymax>2</ymax>", ""),
            r"bad\.xml: field 'object\[0\]/bndbox/ymax' is missing",
        ),
        (
            _voc_xml(objects=[{"name": "c", "box": (1, "nan", 2, 2)}]),
            r"bad\.xml: field 'object\[0\]/bndbox/ymin' must be finite",
        ),
        (
            _voc_xml(objects=[{"name": "c", "box": (1, 1, 2, 2), "difficult": "maybe"}]),
            r"bad\.xml: field 'object\[0\]/difficult' must be a number",
        ),
    ],
)
def test_voc_malformed_files(tmp_path, text, match):
    good = _voc_xml(objects=[{"name": "cat", "box": (1, 1, 5, 5)}])
    xml_dir, img_dir = _voc_set(
        tmp_path, {"bad.xml": text, "good.xml": good}, {"bad.jpg": (40, 30), "good.jpg": (40, 30)}
    )
    with pytest.raises(AnnotationError, match=match):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json")
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", skip_bad_files=True)
    assert r.num_images == 1 and r.warnings == {"skipped_bad_files": 1}
    assert r.skipped_files == [str(xml_dir / "bad.xml")]


def test_voc_missing_and_corrupt_images(tmp_path):
    xml_dir, img_dir = _voc_set(
        tmp_path, {"a.xml": _voc_xml(), "b.xml": _voc_xml("b.jpg")}, {"a.jpg": (40, 30)}
    )
    with pytest.raises(AnnotationError, match=r"b\.xml: no image for it in .*img.*'b\.jpg'"):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json")
    (img_dir / "b.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(AnnotationError, match=r"b\.xml: its image .*b\.jpg is not readable"):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json")
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", skip_bad_files=True)
    assert r.num_images == 1 and r.warnings["skipped_bad_files"] == 1


def test_voc_unknown_class_with_classes(tmp_path):
    xml_dir, img_dir = _voc_set(
        tmp_path,
        {"a.xml": _voc_xml(objects=[{"name": "zebra", "box": (1, 1, 5, 5)}])},
        {"a.jpg": (40, 30)},
    )
    with pytest.raises(
        AnnotationError,
        match=r"a\.xml: object\[0\] has class 'zebra'.*allowed classes \['cat', "
        r"'dog'\]",
    ):
        convert_voc(
            xml_dir, img_dir, tmp_path / "o.json", classes=["cat", "dog"], skip_bad_files=True
        )
    with pytest.raises(ValueError, match="classes must be distinct"):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json", classes=["cat", "cat"])
    with pytest.raises(ValueError, match=r"bad_boxes must be one of \('clip', 'drop', 'error'\)"):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json", bad_boxes="fix")


def test_voc_size_mismatch_policy_and_exif(tmp_path):
    # labelImg sometimes writes 0x0; b's XML says 40x30 but the image is 50x30.
    xml_dir, img_dir = _voc_set(
        tmp_path,
        {
            "a.xml": _voc_xml(size=(0, 0), objects=[{"name": "c", "box": (1, 1, 45, 5)}]),
            "b.xml": _voc_xml("b.jpg", objects=[{"name": "c", "box": (1, 1, 45, 5)}]),
        },
        {"a.jpg": (50, 30), "b.jpg": (50, 30)},
    )
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json")
    data = json.loads((tmp_path / "o.json").read_text())
    assert [(im["width"], im["height"]) for im in data["images"]] == [(50, 30), (50, 30)]
    assert r.warnings == {"size_mismatch": 2} and len(r.size_mismatch_files) == 2
    assert _boxes(tmp_path / "o.json") == [[0.0, 0.0, 45.0, 5.0]] * 2  # checked vs the image
    with pytest.raises(
        AnnotationError,
        match=r"a\.xml: size in the XML is 0x0 but the image .* "
        r"is 50x30",
    ):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json", size_mismatch="error")

    # A JPEG stored 40x20 with EXIF orientation 6 (rotate 90): detectron2 reads it as 20x40.
    from detectron2.data.detection_utils import read_image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20)).save(img_dir / "a.jpg", exif=exif.tobytes())
    (xml_dir / "a.xml").write_text(_voc_xml(size=(20, 40)))
    (xml_dir / "b.xml").unlink()
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", size_mismatch="error")
    im = json.loads((tmp_path / "o.json").read_text())["images"][0]
    assert read_image(str(img_dir / "a.jpg")).shape[:2] == (im["height"], im["width"]) == (40, 20)


@pytest.mark.parametrize(
    "policy, crowd, n", [("keep", [0, 0], 2), ("crowd", [0, 1], 2), ("drop", [0], 1)]
)
def test_voc_difficult_policy(tmp_path, policy, crowd, n):
    objs = [{"name": "c", "box": (1, 1, 5, 5)}, {"name": "c", "box": (2, 2, 9, 9), "difficult": 1}]
    xml_dir, img_dir = _voc_set(tmp_path, {"a.xml": _voc_xml(objects=objs)}, {"a.jpg": (40, 30)})
    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", difficult=policy)
    anns = json.loads((tmp_path / "o.json").read_text())["annotations"]
    assert [a["iscrowd"] for a in anns] == crowd and r.num_boxes == n
    assert [a["difficult"] for a in anns] == [0, 1][:n]
    assert r.warnings == ({"dropped_difficult": 1} if policy == "drop" else {})


def test_voc_output_is_atomic_and_valid_coco(tmp_path):
    xml_dir, img_dir = _voc_set(
        tmp_path,
        {"a.xml": _voc_xml(objects=[{"name": "c", "box": (1, 1, 5, 5)}])},
        {"a.jpg": (40, 30)},
    )
    out = tmp_path / "out" / "o.json"
    convert_voc(xml_dir, img_dir, out)
    before = out.read_bytes()
    (xml_dir / "b.xml").write_text("<annotation>")  # a later failing run leaves the file alone
    (img_dir / "b.jpg").write_bytes(before)
    with pytest.raises(AnnotationError):
        convert_voc(xml_dir, img_dir, out)
    assert out.read_bytes() == before and os.listdir(out.parent) == ["o.json"]
    validate_coco_dict(json.loads(before), "o.json")


def test_read_split_file(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("name,class\na.jpg,x\n")
    with pytest.raises(AnnotationError, match=r"s\.csv: a CSV split file needs a 'filename' col"):
        read_split_file(p)
    p.write_text("filename,class\na.jpg,x\n,y\n")
    with pytest.raises(AnnotationError, match=r"s\.csv: line 3: empty 'filename'"):
        read_split_file(p)
    p.write_text("000005 -1\n000007  1\n000005 1\n")
    assert read_split_file(p) == ["000005", "000007"]
    with pytest.raises(FileNotFoundError, match="split file"):
        read_split_file(tmp_path / "none.txt")


def _tool(name: str):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "tools"))


def test_voc_to_coco_tool(tmp_path, capsys):
    xml_dir, img_dir = _voc_set(
        tmp_path,
        {"a.xml": _voc_xml(objects=[{"name": "cat", "box": (0, 1, 5, 5)}])},
        {"a.jpg": (40, 30)},
    )
    args = [
        "--xml-dir",
        str(xml_dir),
        "--image-dir",
        str(img_dir),
        "--out",
        str(tmp_path / "o.json"),
    ]
    assert _tool("voc_to_coco").main(args) == 0
    out = capsys.readouterr().out
    assert "1 images (0 without objects), 1 boxes" in out and "clipped=1" in out
    assert _tool("voc_to_coco").main(args + ["--bad-boxes", "error"]) == 2
    assert "a.xml: object[0] ('cat') box is outside" in capsys.readouterr().err


@pytest.mark.slow
def test_voc_to_coco_tool_runs_from_repo_root(tmp_path):
    xml_dir, img_dir = _voc_set(
        tmp_path,
        {"a.xml": _voc_xml(objects=[{"name": "cat", "box": (1, 1, 5, 5)}])},
        {"a.jpg": (40, 30)},
    )
    cmd = [
        sys.executable,
        "tools/voc_to_coco.py",
        "--xml-dir",
        str(xml_dir),
        "--image-dir",
        str(img_dir),
        "--out",
        str(tmp_path / "o.json"),
        "--classes",
        "cat,dog",
    ]
    ok = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert [c["name"] for c in json.loads((tmp_path / "o.json").read_text())["categories"]] == [
        "cat",
        "dog",
    ]


# ------------------------------------------------------------------------------------------------
# COCO json validation and registration
# ------------------------------------------------------------------------------------------------


def _coco_dict() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 3,
                "bbox": [1, 2, 10, 5],
                "iscrowd": 0,
                "area": 50,
            },
            {
                "id": 11,
                "image_id": 2,
                "category_id": 7,
                "bbox": [0, 0, 40, 30],
                "iscrowd": 0,
                "area": 1200,
            },
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }


def _mutate(path: str, value):
    d = _coco_dict()
    keys = path.split(".")
    target = d
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    last = keys[-1]
    if value is KeyError:
        del target[last]
    else:
        target[int(last) if isinstance(target, list) else last] = value
    return d


@pytest.mark.parametrize(
    "data, match",
    [
        ([], r"f\.json: not a COCO annotation file: the top level is a list"),
        (
            _mutate("annotations", KeyError),
            r"f\.json: not a COCO annotation file: missing key "
            r"'annotations'",
        ),
        (_mutate("images", {}), r"f\.json: 'images' must be a list, got dict"),
        (_mutate("categories", []), r"f\.json: 'categories' is empty"),
        (_mutate("categories.0.id", "7"), r"categories\[0\]: 'id' must be an integer, got '7'"),
        (_mutate("categories.1.id", 7), r"categories\[1\]: duplicate category id 7"),
        (_mutate("categories.1.name", "dog"), r"duplicate category name 'dog' \(ids 7 and 3\)"),
        (_mutate("images.1.id", 1), r"images\[1\] \(id 1\): duplicate image id 1"),
        (_mutate("images.0.width", 0), r"images\[0\] \(id 1\): 'width' must be a positive integ"),
        (_mutate("images.0.file_name", KeyError), r"images\[0\] \(id 1\): 'file_name' must be"),
        (_mutate("annotations.1.id", 10), r"annotation id 10 \(annotations\[1\]\): duplicate"),
        (_mutate("annotations.0.id", None), r"annotations\[0\]: 'id' must be an integer"),
        (
            _mutate("annotations.0.image_id", 5),
            r"annotation id 10 \(annotations\[0\]\): "
            r"'image_id' 5 is not the id of an image",
        ),
        (
            _mutate("annotations.1.category_id", 1),
            r"annotation id 11 .*'category_id' 1 is not in "
            r"'categories' \(ids \[3, 7\]\)",
        ),
        (
            _mutate("annotations.0.bbox", [1, 2, -3, 5]),
            r"annotation id 10 .*'bbox' \[1, 2, -3, 5\]"
            r" has negative width or height",
        ),
        (
            _mutate("annotations.0.bbox", [1, 2, 3]),
            r"annotation id 10 .*'bbox' must be \[x, y, "
            r"width, height\] of 4 finite numbers",
        ),
        (_mutate("annotations.0.bbox", [1, 2, float("inf"), 3]), r"4 finite numbers"),
        (_mutate("annotations.0.iscrowd", 2), r"annotation id 10 .*'iscrowd' must be 0 or 1"),
        (
            _mutate("annotations.0.ignore", 1),
            r"annotation id 10 .*'ignore' is 1; detectron2 does "
            r"not support",
        ),
        (_mutate("annotations.0.area", -1), r"annotation id 10 .*'area' must be a number >= 0"),
        (_mutate("annotations.0.segmentation", "x"), r"annotation id 10 .*'segmentation' must be"),
    ],
)
def test_coco_validation_errors(data, match):
    with pytest.raises(AnnotationError, match=match):
        validate_coco_dict(data, "f.json")


def test_coco_validation_warnings():
    d = _coco_dict()
    d["annotations"][0]["bbox"] = [35, 2, 10, 0]  # outside the 40-wide image, and empty
    d["images"][1]["file_name"] = "a.png"
    del d["annotations"][1]["area"]
    d["annotations"][1]["segmentation"] = [[1, 2, 3, 4]]  # < 3 points: detectron2 drops it
    s = validate_coco_dict(d, "f.json")
    assert s.warnings == {
        "boxes_outside_image": 1,
        "dropped_by_detectron2_no_valid_polygon": 1,
        "duplicate_file_names": 1,
        "empty_boxes": 1,
        "missing_area": 1,
    }
    assert s.thing_classes == ["cat", "dog"] and s.category_ids == [3, 7]


def test_load_coco_json_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"COCO annotation file .*none\.json"):
        load_coco_json_checked(tmp_path / "none.json")
    p = tmp_path / "t.json"
    p.write_text(json.dumps(_coco_dict())[:50])
    with pytest.raises(AnnotationError, match=r"t\.json: not valid json \(line 1, column"):
        load_coco_json_checked(p)
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AnnotationError, match=r"t\.json: not"):
        load_coco_json_checked(p)


def _coco_files(tmp_path: Path, data: dict | None = None) -> tuple[Path, Path]:
    data = data or _coco_dict()
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    for im in data["images"]:
        Image.new("RGB", (im["width"], im["height"]), (10, 200, 30)).save(root / im["file_name"])
    p = tmp_path / "c.json"
    p.write_text(json.dumps(data))
    return p, root


def test_register_coco_dataset(tmp_path, names):
    p, root = _coco_files(tmp_path)
    name = names()
    s = register_coco_dataset(name, p, root)
    assert (s.name, s.num_images, s.num_annotations) == (name, 2, 2)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["cat", "dog"] and meta.evaluator_type == "coco"
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    # detectron2's loader sets the same metadata again (Metadata raises if it would differ) and
    # maps the non-contiguous ids 3, 7 to 0, 1.
    dicts = get_dataset_dicts_checked(name)
    assert [[a["category_id"] for a in d["annotations"]] for d in dicts] == [[0], [1]]
    assert dicts[0]["file_name"] == os.path.join(str(root), "a.png")

    assert register_coco_dataset(name, str(p), str(root)) is s  # idempotent
    other = tmp_path / "other.json"
    other.write_text(p.read_text())
    with pytest.raises(
        ValueError,
        match=rf"dataset '{name}' is already registered with "
        rf"json_file=.*c\.json.*cannot register it again with json_file=.*other",
    ):
        register_coco_dataset(name, other, root)


def test_register_coco_dataset_errors(tmp_path, names):
    p, root = _coco_files(tmp_path)
    (root / "b.png").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"c\.json: 1 of 2 image files are not under "
        r"image_root .*\['b\.png'\]",
    ):
        register_coco_dataset(names(), p, root)
    with pytest.raises(FileNotFoundError, match=r"image_root .*nowhere.* is not a directory"):
        register_coco_dataset(names(), p, tmp_path / "nowhere")
    bad = _coco_dict()
    bad["annotations"][0]["category_id"] = 99
    p.write_text(json.dumps(bad))
    name = names()
    with pytest.raises(AnnotationError, match=r"c\.json: annotation id 10 .*'category_id' 99"):
        register_coco_dataset(name, p, root, check_image_files=False)
    assert name not in DatasetCatalog.list()


def test_unregistered_dataset_names(tmp_path, names):
    p, root = _coco_files(tmp_path)
    mine = names()
    register_coco_dataset(mine, p, root)
    with pytest.raises(
        KeyError,
        match=rf"cfg\.DATASETS\.TRAIN: no dataset named 'nope' is "
        rf"registered.*Registered by resnext_det: \[.*'{mine}'.*, plus \d+ others",
    ):
        check_dataset_names(["nope"], "cfg.DATASETS.TRAIN")
    with pytest.raises(ResNeXtDetError, match="no dataset named 'nope2' is registered"):
        get_dataset_dicts_checked("nope2")
    check_dataset_names(["later"], registered_later=["later"])
    check_dataset_names([mine, "coco_2017_val"])


def test_register_from_config(tmp_path, names):
    p, root = _coco_files(tmp_path)
    cfg = add_resnext_config(get_cfg())
    a, b = names(), names()
    cfg.DATASETS.COCO_REGISTER = [[a, str(p), str(root)], [b, str(p), str(root)]]
    summaries = register_from_config(cfg)
    assert [s.name for s in summaries] == [a, b] and {a, b} <= set(DatasetCatalog.list())
    cfg.DATASETS.COCO_REGISTER = [[a, str(p)]]
    with pytest.raises(
        ValueError,
        match=r"cfg\.DATASETS\.COCO_REGISTER\[0\] must be \[name, "
        r"json_file, image_root\]",
    ):
        register_from_config(cfg)


# ------------------------------------------------------------------------------------------------
# The generated demo set
# ------------------------------------------------------------------------------------------------


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_synthetic_is_deterministic(tmp_path):
    kw = dict(num_train=6, num_val=3, image_size=96)
    a = _all_files(make_synthetic_coco(tmp_path / "a", seed=3, **kw).root)
    b = _all_files(make_synthetic_coco(tmp_path / "b", seed=3, **kw).root)
    c = _all_files(make_synthetic_coco(tmp_path / "c", seed=4, **kw).root)
    assert len(a) == 6 + 3 + 2 and a == b
    assert a.keys() == c.keys()
    assert a["annotations/train.json"] != c["annotations/train.json"]
    assert all(a[k] != c[k] for k in a if k.endswith(".png"))
    # Each image draws from its own seed: the train split does not depend on num_val.
    d = _all_files(make_synthetic_coco(tmp_path / "d", seed=3, **{**kw, "num_val": 5}).root)
    assert {k: v for k, v in d.items() if k.startswith("train")} == {
        k: v for k, v in a.items() if k.startswith("train")
    }


def test_synthetic_boxes_are_tight_and_varied(tmp_path, names):
    from pycocotools import mask as mask_util

    ds = make_synthetic_coco(tmp_path, num_train=60, num_val=2, seed=0)
    data, summary = load_coco_json_checked(ds.train_json)
    assert summary.warnings == {} and summary.thing_classes == list(ds.classes)
    anns_by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    overlapping = 0
    for im in data["images"]:
        anns = anns_by_image.get(im["id"], [])
        assert 1 <= len(anns) <= 4
        rgb = np.asarray(Image.open(ds.train_image_root / im["file_name"])).astype(int)
        saturation = rgb.max(axis=2) - rgb.min(axis=2)
        union = np.zeros(saturation.shape, dtype=bool)
        boxes = []
        for a in anns:
            mask = mask_util.decode(a["segmentation"]).astype(bool)
            # The box is exactly the mask's box (pycocotools computes it), the area its pixels.
            assert a["bbox"] == mask_util.toBbox(a["segmentation"]).tolist()
            assert a["area"] == mask.sum() and not (union & mask).any()
            union |= mask
            boxes.append(a["bbox"])
        # Objects are the image's only saturated pixels: the masks are what was drawn.
        assert saturation[union].min() >= 50 and saturation[~union].max() <= 40
        ious = mask_util.iou(boxes, boxes, [0] * len(boxes))
        overlapping += int((np.triu(ious, 1) > 0).any())
    areas = [a["area"] for a in data["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2 and any(32**2 < a < 96**2 for a in areas)
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3, 4}
    assert overlapping >= 5

    name = names()
    register_coco_dataset(name, ds.train_json, ds.train_image_root)
    assert len(get_dataset_dicts_checked(name)) == 60


def test_synthetic_reuses_existing_set_and_checks_args(tmp_path):
    ds = make_synthetic_coco(tmp_path, num_train=3, num_val=2, seed=1, image_size=64)
    stamp = ds.train_json.stat().st_mtime_ns
    make_synthetic_coco(tmp_path, num_train=3, num_val=2, seed=1, image_size=64)
    assert ds.train_json.stat().st_mtime_ns == stamp
    before = _all_files(tmp_path)
    make_synthetic_coco(tmp_path, num_train=3, num_val=2, seed=1, image_size=64, overwrite=True)
    assert _all_files(tmp_path) == before
    with pytest.raises(ValueError, match="num_train must be an integer >= 1, got 0"):
        make_synthetic_coco(tmp_path, num_train=0)
    with pytest.raises(ValueError, match="image_size must be an integer >= 64, got 32"):
        make_synthetic_coco(tmp_path, image_size=32)


def test_make_synthetic_dataset_tool(tmp_path, capsys):
    rc = _tool("make_synthetic_dataset").main(
        ["--out", str(tmp_path), "--num-train", "4", "--num-val", "2", "--image-size", "64"]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "train: 4 images" in out and "val: 2 images" in out


# ------------------------------------------------------------------------------------------------
# The mapper
# ------------------------------------------------------------------------------------------------


def test_checked_mapper_errors_name_path_and_id(tmp_path):
    mapper = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    Image.new("RGB", (40, 30), (1, 2, 3)).save(tmp_path / "ok.png")
    record = {
        "file_name": str(tmp_path / "ok.png"),
        "image_id": 7,
        "height": 30,
        "width": 40,
        "annotations": [
            {"bbox": [1, 2, 10, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
        ],
    }
    out = mapper(record)
    assert tuple(out["image"].shape) == (3, 30, 40) and len(out["instances"]) == 1

    missing = {**record, "file_name": str(tmp_path / "gone.png"), "image_id": 8}
    with pytest.raises(
        ImageReadError,
        match=r"image file '.*gone\.png' \(image id 8\) does not "
        r"exist",
    ):
        mapper(missing)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    corrupt = {**record, "file_name": str(tmp_path / "bad.png"), "image_id": "img-9"}
    with pytest.raises(
        ImageReadError,
        match=r"could not read image '.*bad\.png' \(image id "
        r"'img-9'\)",
    ):
        mapper(corrupt)
    # Truncated after the header: PIL fails while decoding, not while opening.
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"trunc\.png' \(image id 7\)"):
        mapper({**record, "file_name": str(tmp_path / "trunc.png")})
