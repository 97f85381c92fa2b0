"""Property-based tests of the annotation and image readers: any input ends in a result or in the
documented error type with a message naming the file, never in an unexplained traceback; what the
COCO validator accepts, detectron2's own ``load_coco_json`` loads, and the evaluator's ground-truth
reader accepts exactly what the validator accepts; what image conversion accepts, detectron2's
``read_image`` reads, unclipped.

The documented types: ``AnnotationError`` (VOC, COCO json, split files, conversion),
``ResultsFormatError`` (the evaluator's readers), ``ImageCheckError`` (the image check that
conversion and the mapper turn into ``AnnotationError`` / ``ImageReadError``)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resnext_det.data import (
    AnnotationError,
    load_coco_json_checked,
    parse_voc_xml,
    read_split_file,
    validate_coco_dict,
)
from resnext_det.data.images import ImageCheckError, decode_image
from resnext_det.data.voc import BAD_BOX_POLICIES, VocObject, apply_box_policy
from resnext_det.evaluation.coco import ResultsFormatError, load_ground_truth, load_results

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# json values, small ints so that ids collide and refer to each other often.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)

# ------------------------------------------------------------------------------------------------
# VOC XML
# ------------------------------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_voc_arbitrary_text(data):
    try:
        parse_voc_xml(data, "fuzz.xml")
    except AnnotationError as exc:
        assert "fuzz.xml" in str(exc)


FIELD = st.one_of(
    st.none(),  # the element is left out
    st.just(""),
    st.integers(-20, 200).map(str),
    st.floats(-50, 300, allow_nan=False).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "1e400", "0x10", " 7 ", "12px", "&amp;", "<"]),
    st.text(max_size=5),
)


def _element(tag: str, value: str | None) -> str:
    if value is None:
        return ""
    from xml.sax.saxutils import escape

    # Mostly escaped; sometimes raw, to make broken XML too.
    return f"<{tag}>{escape(value) if value != '<' else value}</{tag}>"


@st.composite
def voc_documents(draw):
    parts = ["<annotation>", _element("filename", draw(st.none() | st.text(max_size=8)))]
    if draw(st.booleans()) or draw(st.booleans()):
        parts.append(
            "<size>" + _element("width", draw(FIELD)) + _element("height", draw(FIELD)) + "</size>"
        )
    for _ in range(draw(st.integers(0, 3))):
        obj = ["<object>", _element("name", draw(st.none() | st.sampled_from(["cat", "", " a "])))]
        obj.append(_element("difficult", draw(FIELD)))
        if draw(st.integers(0, 4)):
            obj.append("<bndbox>")
            obj += [_element(k, draw(FIELD)) for k in ("xmin", "ymin", "xmax", "ymax")]
            obj.append("</bndbox>")
        parts.append("".join(obj) + "</object>")
    parts.append("</annotation>")
    text = "".join(parts)
    cut = draw(st.none() | st.integers(0, len(text)))  # sometimes truncated
    return text if cut is None else text[:cut]


@FUZZ
@given(voc_documents(), st.integers(1, 80), st.integers(1, 80))
def test_voc_structured_documents_and_box_policy(text, width, height):
    try:
        rec = parse_voc_xml(text, "fuzz.xml")
    except AnnotationError as exc:
        assert "fuzz.xml" in str(exc)
        return
    assert rec.width >= 0 and rec.height >= 0
    for obj in rec.objects:
        assert obj.name and all(math.isfinite(v) for v in obj.xml_box)
        xmin, ymin, xmax, ymax = obj.xml_box
        assert obj.box == (xmin - 1, ymin - 1, xmax, ymax)
        _check_policies(obj, width, height)


def _check_policies(obj: VocObject, width: int, height: int) -> None:
    results = {}
    for policy in BAD_BOX_POLICIES:
        try:
            results[policy] = apply_box_policy(obj, width, height, policy, "fuzz.xml")
        except AnnotationError as exc:
            assert policy == "error" and "fuzz.xml: object[" in str(exc)
            results[policy] = (None, "error")
    for box, _ in results.values():
        if box is not None:
            x0, y0, x1, y1 = box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    if results["drop"][1] == "ok":  # a good box passes every policy unchanged
        assert results["clip"] == results["error"] == (obj.box, "ok")
    else:
        assert results["error"][1] == "error" and results["clip"][1] != "ok"


@FUZZ
@given(
    st.lists(st.floats(-100, 200, allow_nan=False), min_size=4, max_size=4),
    st.integers(1, 100),
    st.integers(1, 100),
)
def test_box_policy_on_any_box(coords, width, height):
    xmin, ymin, xmax, ymax = coords
    _check_policies(
        VocObject(0, "c", (xmin, ymin, xmax, ymax), (xmin - 1, ymin - 1, xmax, ymax)), width, height
    )


@FUZZ
@given(st.text(max_size=200))
@example(",\r0")  # a lone carriage return in a CSV split file (was a raw _csv.Error)
def test_split_file_arbitrary_text(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "split.csv"
        p.write_text(text, encoding="utf-8")
        try:
            names = read_split_file(p)
        except AnnotationError as exc:
            assert "split.csv" in str(exc)
            return
        assert names and len(names) == len(set(names)) and all(n.strip() == n and n for n in names)


# ------------------------------------------------------------------------------------------------
# COCO json
# ------------------------------------------------------------------------------------------------

BASE = {
    "images": [
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.png", "width": 20, "height": 50},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
        {
            "id": 2,
            "image_id": 2,
            "category_id": 2,
            "bbox": [0.5, 0, 3, 4],
            "area": 12.0,
            "iscrowd": 0,
            "segmentation": [[0.5, 0, 3.5, 0, 3.5, 4]],
        },
    ],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
}


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_coco(draw):
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in _paths(d) if p]))
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return d


def _validate_or_explained(data):
    try:
        return validate_coco_dict(data, "fuzz.json")
    except AnnotationError as exc:
        assert "fuzz.json" in str(exc)
        return None


@FUZZ
@given(JSON)
def test_coco_arbitrary_json(data):
    _validate_or_explained(data)


@FUZZ
@given(mutated_coco())
def test_coco_mutations_are_caught_before_detectron2(data):
    """Whatever the validator accepts, detectron2's own loader (and pycocotools) loads."""
    from detectron2.data.datasets import load_coco_json

    summary = _validate_or_explained(data)
    if summary is None:
        return
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "ok.json"
        p.write_text(json.dumps(data))
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                dicts = load_coco_json(str(p), d)
        finally:
            logging.disable(logging.NOTSET)
    assert len(dicts) == summary.num_images
    n_dropped = summary.warnings.get("dropped_by_detectron2_no_valid_polygon", 0)
    assert sum(len(r["annotations"]) for r in dicts) == summary.num_annotations - n_dropped


@FUZZ
@given(st.binary(max_size=200))
def test_coco_file_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.json"
        p.write_bytes(data)
        try:
            load_coco_json_checked(p)
        except AnnotationError as exc:
            assert "fuzz.json" in str(exc)
        try:
            load_ground_truth(p)
        except ResultsFormatError as exc:
            assert "fuzz.json" in str(exc)


@FUZZ
@given(st.binary(max_size=200))
def test_split_file_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "split.txt"
        p.write_bytes(data)
        try:
            read_split_file(p)
        except AnnotationError as exc:
            assert "split.txt" in str(exc)


@st.composite
def json_texts(draw):
    """COCO-shaped json text with, somewhere, deep nesting or a long integer (issue 15 item 10):
    the text is built by hand because ``json.dumps`` itself refuses such values."""
    depth = draw(st.integers(1, 3000) | st.just(100_000))
    bracket = draw(st.sampled_from(["[", "{"]))
    nested = ('{"a":' * depth + "0" + "}" * depth) if bracket == "{" else "[" * depth + "]" * depth
    number = "9" * draw(st.integers(1, 6000))
    value = draw(st.sampled_from([nested, number, f"[{nested}, {number}]"]))
    where = draw(st.sampled_from(["images", "annotations", "categories", "extra", "width", "id"]))
    base = copy.deepcopy(BASE)
    if where in ("width", "id"):
        text = json.dumps(base).replace(f'"{where}": 40', f'"{where}": {value}', 1)
    else:
        text = json.dumps({**base, where: "VALUE"}).replace('"VALUE"', value, 1)
    return text


@FUZZ
@given(json_texts())
def test_json_files_with_deep_nesting_and_long_integers(text):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.json"
        p.write_text(text)
        try:
            load_coco_json_checked(p)
        except AnnotationError as exc:
            assert "fuzz.json" in str(exc)
        try:
            load_ground_truth(p)
        except ResultsFormatError as exc:
            assert "fuzz.json" in str(exc)


# Values no json file holds (a dict given directly): integers past 64 bits and past Python's
# int-to-str limit, which make repr, float() and numpy fail.
WIDE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 12)
    | st.integers()
    | st.sampled_from([2**63, -(2**63) - 1, 10**30])
    | st.sampled_from([400, 5000]).map(lambda k: 10**k)  # built lazily: repr() fails on 10**5000
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["yes", "1", "0"]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated_coco_wide(draw):
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in _paths(d) if p]))
        parent = d
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(WIDE)
    return d


@FUZZ
@given(mutated_coco_wide())
def test_ground_truth_reader_accepts_exactly_what_the_validator_accepts(data):
    """One validator for training and evaluation (issue 15 item 13): the evaluator's reader
    refuses exactly what ``validate_coco_dict(for_evaluation=True)`` refuses, with its message."""
    try:
        validate_coco_dict(data, "<ground-truth dict>", for_evaluation=True)
        expected = None
    except AnnotationError as exc:
        expected = str(exc)
    try:
        validate_coco_dict(data, "fuzz.json")
    except AnnotationError as exc:
        assert "fuzz.json" in str(exc)
    try:
        gt = load_ground_truth(data)
    except ResultsFormatError as exc:
        assert str(exc) == expected
        return
    assert expected is None
    assert gt.num_images == len(data["images"]) and len(gt.ann_id) == len(data["annotations"])


# ------------------------------------------------------------------------------------------------
# The evaluation tool's results reader
# ------------------------------------------------------------------------------------------------

RESULT = st.fixed_dictionaries(
    {},
    optional={
        "image_id": st.integers(-1, 4) | JSON,
        "category_id": st.integers(0, 3) | JSON,
        "bbox": st.lists(st.floats(-5, 50) | st.integers(-5, 50), min_size=3, max_size=5) | JSON,
        "score": st.floats(allow_nan=True) | JSON,
    },
)


@FUZZ
@given(st.lists(RESULT, max_size=5) | JSON)
def test_evaluation_results_reader(results):
    gt = load_ground_truth(copy.deepcopy(BASE))
    try:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "fuzz_results.json"
            p.write_text(json.dumps(results))
            load_results(p, gt)
    except ResultsFormatError as exc:
        assert "fuzz_results.json" in str(exc)


# ------------------------------------------------------------------------------------------------
# Images: what conversion accepts, detectron2 reads, and reads unclipped (issue 15 items 7, 8)
# ------------------------------------------------------------------------------------------------

IMAGE_MODES = ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F"]


def _source_image(mode: str, w: int, h: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 2**16, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 2**20, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.uniform(0, 1000, (h, w)).astype(np.float32))
    rgba = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    return rgba if mode == "RGBA" else rgba.convert(mode)


@FUZZ
@given(
    st.sampled_from(IMAGE_MODES),
    st.sampled_from(["PNG", "TIFF", "JPEG", "BMP"]),
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 2**16),
    st.none() | st.floats(0, 1, exclude_max=True) | st.integers(1, 30),
)
def test_images_conversion_accepts_only_what_detectron2_reads_unclipped(mode, fmt, w, h, seed, cut):
    import numpy as np
    from detectron2.data.detection_utils import read_image
    from hypothesis import assume

    src = _source_image(mode, w, h, seed)
    buf = io.BytesIO()
    try:
        src.save(buf, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # PIL cannot write this mode in this format
    data = buf.getvalue()
    if isinstance(cut, float):
        data = data[: int(len(data) * cut)]
    elif isinstance(cut, int):
        data = data[:-cut]  # a few bytes short, as the public set's JPEG
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"fuzz.{fmt.lower()}"
        p.write_bytes(data)
        try:
            size = decode_image(p)
        except ImageCheckError as exc:
            assert str(p) in str(exc)
            return
        image = read_image(str(p), format="RGB")  # must not raise: training reads what we accept
        assert image.shape[:2] == (size[1], size[0])
        if cut is None and fmt in ("PNG", "TIFF", "BMP"):  # lossless: compare with the source
            wide = src.mode in ("I;16", "I", "F")
            if wide:  # only acceptable if nothing above 255 would be clipped
                assert float(np.asarray(src).max()) <= 255, (src.mode, fmt)
            else:
                np.testing.assert_array_equal(image, np.asarray(src.convert("RGB")))
