"""Property-based tests of the annotation readers: any input ends in a result or in the
documented error type with a message naming the file, never in an unexplained traceback; and what
the COCO validator accepts, detectron2's own ``load_coco_json`` loads."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnext_det.data import AnnotationError, parse_voc_xml, read_split_file, validate_coco_dict
from resnext_det.data.voc import BAD_BOX_POLICIES, VocObject, apply_box_policy

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
    from resnext_det.data import load_coco_json_checked

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.json"
        p.write_bytes(data)
        try:
            load_coco_json_checked(p)
        except AnnotationError as exc:
            assert "fuzz.json" in str(exc)


# ------------------------------------------------------------------------------------------------
# The evaluation tool's results reader, where it exists
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
    ev = pytest.importorskip("resnext_det.evaluation.coco")
    if not hasattr(ev, "load_results") or not hasattr(ev, "load_ground_truth"):
        pytest.skip("resnext_det.evaluation has no load_results/load_ground_truth")
    gt = ev.load_ground_truth(copy.deepcopy(BASE))
    try:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "fuzz_results.json"
            p.write_text(json.dumps(results))
            ev.load_results(p, gt)
    except ev.ResultsFormatError as exc:
        assert "fuzz_results.json" in str(exc)
