"""The data faults of the reliability issue (15: items 7, 8, 10, 13) and the shape of issue 13, each
reproduced: the fault is shown to be real where it can be (detectron2 itself saturates, PIL itself
opens the truncated file), then the project's answer is checked."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import RACCOON, REPO
from detectron2.data.detection_utils import read_image
from detectron2.structures import BoxMode
from PIL import Image

import resnext_det.data as data_pkg
from resnext_det.data import (
    AnnotationError,
    CheckedDatasetMapper,
    ImageReadError,
    convert_voc,
    load_coco_json_checked,
    read_split_file,
    validate_coco_dict,
)
from resnext_det.errors import BadFileError
from resnext_det.evaluation.coco import ResultsFormatError, load_ground_truth, load_results


def _voc_xml(filename: str, size: tuple[int, int] = (40, 30)) -> str:
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size><object><name>cat</name>"
        "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )


def _voc_set(tmp_path: Path, names: list[str], size: tuple[int, int] = (40, 30)):
    """XMLs for ``names`` (image files, written by the caller or here as 8-bit RGB JPEGs)."""
    xml_dir, img_dir = tmp_path / "xml", tmp_path / "img"
    xml_dir.mkdir(exist_ok=True)
    img_dir.mkdir(exist_ok=True)
    for name in names:
        (xml_dir / f"{Path(name).stem}.xml").write_text(_voc_xml(name, size))
        if not (img_dir / name).exists():
            Image.new("RGB", size, (90, 120, 30)).save(img_dir / name)
    return xml_dir, img_dir


def _tool(name: str):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(REPO / "tools"))


def _voc_to_coco(xml_dir, img_dir, out, *extra: str) -> int:
    args = ["--xml-dir", str(xml_dir), "--image-dir", str(img_dir), "--out", str(out), *extra]
    return _tool("voc_to_coco").main(args)


def _png_rgb16(path: Path, a: np.ndarray) -> None:
    """A 16-bit RGB PNG, written by hand (PIL cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    h, w, _ = a.shape
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _sixteen_bit_png(path: Path, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    """A 16-bit grey PNG (PIL mode 'I;16') using the full range, as a 16-bit sensor writes."""
    w, h = size
    a = (np.linspace(0, 65535, w * h).reshape(h, w)).astype(np.uint16)
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    im.save(path)
    return a


# ------------------------------------------------------------------------------------------------
# Issue 15 item 7: 16-bit PNGs train saturated
# ------------------------------------------------------------------------------------------------


def test_item7_16bit_png_is_refused_by_conversion_not_saturated(tmp_path, capsys):
    xml_dir, img_dir = _voc_set(tmp_path, ["a.jpg"])
    (xml_dir / "deep.xml").write_text(_voc_xml("deep.png"))
    _sixteen_bit_png(img_dir / "deep.png")
    # The fault is real: detectron2 reads it with almost every pixel at 255.
    assert (read_image(str(img_dir / "deep.png"), format="BGR") == 255).mean() > 0.99

    with pytest.raises(AnnotationError, match=r"deep\.xml: its image .*deep\.png cannot be used: "):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(AnnotationError, match=r"PIL mode 'I;16' has more than 8 bits"):
        convert_voc(xml_dir, img_dir, tmp_path / "o.json")

    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", bad_images="skip")
    assert r.num_images == 1 and r.warnings == {"skipped_bad_images": 1}
    assert r.skipped_files == [str(xml_dir / "deep.xml")]

    assert _voc_to_coco(xml_dir, img_dir, tmp_path / "t.json") == 2
    err = capsys.readouterr().err
    assert "deep.png cannot be used" in err and "'I;16'" in err and "Traceback" not in err


def test_item7_16bit_png_is_refused_by_the_mapper_not_saturated(tmp_path):
    mapper = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    record = {
        "file_name": str(tmp_path / "deep.png"),
        "image_id": 3,
        "height": 30,
        "width": 40,
        "annotations": [
            {"bbox": [1, 2, 10, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
        ],
    }
    _sixteen_bit_png(tmp_path / "deep.png")
    with pytest.raises(
        ImageReadError, match=r"deep\.png' \(image id 3\) cannot be used: PIL mode 'I;16'"
    ):
        mapper(record)
    # 8-bit grey and RGB, and a 16-bit RGB PNG (PIL keeps its high byte), still train.
    Image.fromarray(np.full((30, 40), 77, np.uint8)).save(tmp_path / "grey.png")
    out = mapper({**record, "file_name": str(tmp_path / "grey.png")})
    assert out["image"].shape == (3, 30, 40) and int(out["image"].max()) == 77
    rgb16 = np.zeros((30, 40, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 0x1234, 0xABCD, 0xFFFF
    _png_rgb16(tmp_path / "rgb16.png", rgb16)
    out = mapper({**record, "file_name": str(tmp_path / "rgb16.png")})
    bgr = out["image"][:, 0, 0].tolist()
    assert bgr == [0xFF, 0xAB, 0x12]  # the high bytes, in BGR order: scaled, not clipped


# ------------------------------------------------------------------------------------------------
# Issue 15 item 8: a truncated JPEG passes conversion and kills training
# ------------------------------------------------------------------------------------------------


def _real_jpeg(path: Path) -> bytes:
    """A real photograph (the raccoon set's) where present, else a noisy generated JPEG."""
    src = RACCOON / "images" / "raccoon-1.jpg"
    if src.is_file():
        shutil.copyfile(src, path)
    else:
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (417, 650, 3), dtype=np.uint8)).save(path, quality=90)
    return path.read_bytes()


def test_item8_truncated_jpeg_and_non_image_fail_conversion_naming_each_file(tmp_path, capsys):
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    data = _real_jpeg(img_dir / "whole.jpg")
    (img_dir / "short.jpg").write_bytes(data[:-20])  # 20 bytes short, as in the public set
    (img_dir / "text.jpg").write_bytes(b"this is not an image\n" * 10)
    with Image.open(img_dir / "whole.jpg") as im:
        size = im.size
    xml_dir, _ = _voc_set(tmp_path, ["whole.jpg", "short.jpg", "text.jpg"], size)
    # The fault is real: the header reads fine (today's size check passes), decoding fails.
    with Image.open(img_dir / "short.jpg") as im:
        assert im.size == size
        with pytest.raises(OSError, match="truncated"):
            im.load()

    with pytest.raises(AnnotationError) as info:
        convert_voc(xml_dir, img_dir, tmp_path / "o.json", workers=3)
    msg = str(info.value)
    assert msg.startswith("2 of 3 images cannot be used")
    assert "short.xml: its image " in msg and "short.jpg is not readable" in msg
    assert "truncated" in msg and "text.jpg is not readable" in msg and "whole.jpg" not in msg
    assert not (tmp_path / "o.json").exists()

    r = convert_voc(xml_dir, img_dir, tmp_path / "o.json", bad_images="skip", workers=1)
    assert r.num_images == 1 and r.warnings == {"skipped_bad_images": 2}
    assert sorted(map(os.path.basename, r.skipped_files)) == ["short.xml", "text.xml"]
    # What conversion keeps, training reads.
    mapper = CheckedDatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    ds = load_coco_json_checked(r.out_json)[0]
    for im in ds["images"]:
        out = mapper(
            {
                "file_name": str(img_dir / im["file_name"]),
                "image_id": im["id"],
                "height": im["height"],
                "width": im["width"],
                "annotations": [],
            }
        )
        assert tuple(out["image"].shape[1:]) == (im["height"], im["width"])

    assert _voc_to_coco(xml_dir, img_dir, tmp_path / "t.json") == 2
    err = capsys.readouterr().err
    assert "short.jpg is not readable" in err and "text.jpg is not readable" in err
    assert _voc_to_coco(xml_dir, img_dir, tmp_path / "t.json", "--bad-images", "skip") == 0
    assert "skipped_bad_images=2" in capsys.readouterr().out


@pytest.mark.skipif(not (RACCOON / "images").is_dir(), reason="shared raccoon data not present")
def test_item8_every_raccoon_image_decodes_in_the_conversion(tmp_path):
    """The real set: all 200 decode (in parallel); one of them cut by 20 bytes is named."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for p in (RACCOON / "images").iterdir():
        (img_dir / p.name).symlink_to(p)
    (img_dir / "raccoon-77.jpg").unlink()
    (img_dir / "raccoon-77.jpg").write_bytes(
        (RACCOON / "images" / "raccoon-77.jpg").read_bytes()[:-20]
    )
    with pytest.raises(
        AnnotationError, match=r"(?s)^1 of 200 images .*raccoon-77\.jpg is not readable"
    ):
        convert_voc(RACCOON / "annotations", img_dir, tmp_path / "o.json", workers=4)
    r = convert_voc(RACCOON / "annotations", img_dir, tmp_path / "o.json", bad_images="skip")
    assert r.num_images == 199 and r.skipped_files == [
        str(RACCOON / "annotations" / "raccoon-77.xml")
    ]


# ------------------------------------------------------------------------------------------------
# Issue 15 item 10 (data parts): unlocated errors
# ------------------------------------------------------------------------------------------------


def _coco() -> dict:
    return {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in range(1, 9)
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 2, 10, 5],
                "area": 50,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }


def _gt_errors(path: Path, match: str) -> None:
    """Registration's reader and the evaluator's ground-truth reader both name the problem."""
    with pytest.raises(AnnotationError, match=match):
        load_coco_json_checked(path)
    with pytest.raises(ResultsFormatError, match=match):
        load_ground_truth(path)


def test_item10_non_utf8_json_and_split_file(tmp_path, capsys):
    p = tmp_path / "latin1.json"
    p.write_bytes(json.dumps(_coco()).replace("cat", "chat\u00e9").encode("latin-1"))
    _gt_errors(p, r"latin1\.json: not a UTF-8 text file \(byte \d+: invalid")
    split = tmp_path / "split.txt"
    split.write_bytes("caf\u00e9.jpg\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"split\.txt: not a UTF-8 text file \(byte 3"):
        read_split_file(split)
    xml_dir, img_dir = _voc_set(tmp_path, ["a.jpg"])
    assert _voc_to_coco(xml_dir, img_dir, tmp_path / "o.json", "--split", str(split)) == 2
    assert "split.txt: not a UTF-8 text file (byte 3" in capsys.readouterr().err


def test_item10_json_nested_100k_deep(tmp_path):
    p = tmp_path / "deep.json"
    head = '{"images": [], "annotations": '
    p.write_text(head + "[" * 100_000 + "]" * 100_000 + "}")
    # The 100th "[" is the 101st level (the "{" is the first): where the message points.
    _gt_errors(p, rf"deep\.json: json nested too deeply .*from line 1, column {len(head) + 100}\)")


def test_item10_json_5000_digit_integer(tmp_path):
    text = json.dumps(_coco(), indent=1).replace('"width": 40', '"width": ' + "7" * 5000, 1)
    p = tmp_path / "digits.json"
    p.write_text(text)
    _gt_errors(p, r"digits\.json: line \d+, column \d+: an integer of 5000 digits")
    # The same number in a dict given directly (no json limit): named, not OverflowError.
    d = _coco()
    d["images"][0]["width"] = 10**5000
    with pytest.raises(AnnotationError, match=r"images\[0\] \(id 1\): 'width' must be a positive"):
        validate_coco_dict(d, "d")
    d = _coco()
    d["annotations"][0]["bbox"][0] = 10**400  # an OverflowError from math.isfinite today
    with pytest.raises(ResultsFormatError, match=r"annotation id 1 .*'bbox' must be"):
        load_ground_truth(d)


@pytest.mark.parametrize("crowd", ["yes", True, None, [1]])
def test_item10_ground_truth_iscrowd_yes(tmp_path, crowd):
    d = _coco()
    d["annotations"][0]["iscrowd"] = crowd
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(d))
    _gt_errors(p, r"gt\.json: annotation id 1 \(annotations\[0\]\): 'iscrowd' must be 0 or 1")


@contextlib.contextmanager
def _read_only_folder(path: Path):
    """A folder nothing can be written in: a read-only tmpfs as root (root ignores modes),
    a mode-0555 folder otherwise."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    cmd = ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)]
    if shutil.which("mount") is None or subprocess.run(cmd, capture_output=True).returncode:
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_item10_voc_to_coco_out_folder_read_only_or_under_one(tmp_path, capsys):
    xml_dir, img_dir = _voc_set(tmp_path, ["a.jpg"])
    (tmp_path / "folder").mkdir()
    assert _voc_to_coco(xml_dir, img_dir, tmp_path / "folder") == 2
    assert f"output {str(tmp_path / 'folder')!r} is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert _voc_to_coco(xml_dir, img_dir, tmp_path / "file" / "o.json") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with _read_only_folder(tmp_path / "ro") as ro:
        for out in (ro / "o.json", ro / "sub" / "dir" / "o.json"):
            assert _voc_to_coco(xml_dir, img_dir, out) == 2
            err = capsys.readouterr().err
            assert f"output {str(out)!r}: the folder {str(ro)!r} is not writable" in err
            with pytest.raises(PermissionError, match="is not writable"):
                convert_voc(xml_dir, img_dir, out)
        assert os.listdir(ro) == []


# ------------------------------------------------------------------------------------------------
# Issue 15 item 13 (data parts)
# ------------------------------------------------------------------------------------------------


def test_item13_id_range_message_names_the_real_ids():
    g = load_ground_truth(_coco())  # image ids 1..8
    det = {"image_id": 99, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    with pytest.raises(ResultsFormatError, match=r"\(8 images, ids 1\.\.8\)"):
        load_results([det], g)


def test_item13_voc_to_coco_out_may_not_overwrite_an_input(tmp_path, capsys):
    xml_dir, img_dir = _voc_set(tmp_path, ["a.jpg", "b.jpg"])
    (tmp_path / "split.txt").write_text("a\n")
    (tmp_path / "link.xml").symlink_to(xml_dir / "b.xml")
    before = {p: p.read_bytes() for p in [*xml_dir.iterdir(), *img_dir.iterdir()]}
    for out, victim in (
        (xml_dir / "a.xml", "a.xml"),
        (img_dir / ".." / "xml" / "b.xml", "b.xml"),  # through ..
        (tmp_path / "link.xml", "b.xml"),  # through a link
        (img_dir / "a.jpg", "a.jpg"),
        (tmp_path / "split.txt", "split.txt"),
    ):
        assert _voc_to_coco(xml_dir, img_dir, out, "--split", str(tmp_path / "split.txt")) == 2
        err = capsys.readouterr().err
        assert f"output {str(out)!r} is the input file" in err and victim in err
    assert {p: p.read_bytes() for p in before} == before
    assert (tmp_path / "link.xml").is_symlink()


@pytest.mark.parametrize(
    "path, value, match",
    [
        ("annotations.0.bbox", [1, 2, -3, 5], r"'bbox' \[1, 2, -3, 5\] has negative width"),
        ("images.1.id", 1, r"images\[1\] \(id 1\): duplicate image id 1"),
        ("images.0.width", -40, r"images\[0\] \(id 1\): 'width' must be a positive integer"),
        ("annotations.0.image_id", 42, r"'image_id' 42 is not the id of an image"),
        ("categories.0.name", "", r"categories\[0\] \(id 1\): 'name' must be a non-empty"),
    ],
)
def test_item13_compare_gt_refuses_what_registration_refuses(tmp_path, path, value, match):
    d = _coco()
    target = d
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    target[int(keys[-1]) if isinstance(target, list) else keys[-1]] = value
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(d))
    with pytest.raises(AnnotationError, match=match) as registration:
        load_coco_json_checked(p)
    with pytest.raises(ResultsFormatError, match=match) as evaluation:
        load_ground_truth(p)
    assert str(evaluation.value) == str(registration.value)  # one validator, one message
    from resnext_det.evaluation import compare_results

    with pytest.raises(ResultsFormatError, match=match):
        compare_results(p, {"m": []}, bootstrap=0, out_dir=tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------------------------------------
# Issue 13: the data package in the shape a maintainer would keep
# ------------------------------------------------------------------------------------------------


def test_issue13_data_modules_are_small_and_do_one_job():
    pkg = Path(data_pkg.__file__).parent
    sizes = {p.name: len(p.read_text().splitlines()) for p in pkg.glob("*.py")}
    assert max(sizes.values()) <= 450, sizes
    from resnext_det.data import voc, voc_convert

    # convert_voc reads as its steps; no step is a long function either.
    steps = inspect.getmembers(voc_convert, inspect.isfunction)
    steps = {n: f for n, f in steps if f.__module__ == voc_convert.__name__}
    assert "convert_voc" in steps and len(steps) >= 6
    for name, fn in steps.items():
        assert len(inspect.getsource(fn).splitlines()) <= 90, name
    # The raccoon set's registration is not in the generic VOC modules.
    for mod in (voc, voc_convert):
        assert "raccoon" not in Path(mod.__file__).read_text().lower(), mod.__name__
    assert data_pkg.register_raccoon.__module__ == "resnext_det.data.raccoon"


def test_issue13_annotation_and_image_errors_are_bad_file_errors():
    assert issubclass(AnnotationError, BadFileError) and issubclass(ImageReadError, BadFileError)
    assert issubclass(ImageReadError, OSError)  # as the read failures it wraps


def test_an_image_name_that_is_not_utf8_is_named_before_anything_is_written(tmp_path, capsys):
    """The COCO json holds names as text: a name with other bytes is one line naming it (it was
    a UnicodeEncodeError when the json was written)."""
    xml_dir, img_dir = _voc_set(tmp_path, ["a.jpg"])
    odd = os.fsdecode(b"r\xff")
    (xml_dir / f"{odd}.xml").write_text(_voc_xml("elsewhere.jpg"))
    Image.new("RGB", (40, 30)).save(img_dir / f"{odd}.jpg", format="JPEG")
    out = tmp_path / "coco.json"
    assert _voc_to_coco(xml_dir, img_dir, out) == 2
    err = capsys.readouterr().err.strip()
    assert "r\\xff.jpg'" in err and "not valid UTF-8" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_file_given_as_the_image_or_xml_folder_is_called_a_file(tmp_path, capsys):
    xml_dir, img_dir = _voc_set(tmp_path, ["a.jpg"])
    a_file = img_dir / "a.jpg"
    assert _voc_to_coco(xml_dir, a_file, tmp_path / "o.json") == 2
    assert f"image directory '{a_file}' is a file, not a folder" in capsys.readouterr().err
    assert _voc_to_coco(a_file, img_dir, tmp_path / "o.json") == 2
    assert f"XML directory '{a_file}' is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
