"""Weights faults of the reliability issue (15), one test per item, named after it: converting onto
the source (5), loosely read metadata and stray sidecars (6), malformed records and pickle size
bombs (10), NaN/Inf weights (12)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_SPEC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnext_det import make_resnext
from resnext_det.weights import (
    CheckpointError,
    check_finite,
    convert_checkpoint,
    load_pretrained,
    read_weights,
)

# ------------------------------------------------------------------ 5: convert_weights OUT == SRC


def test_item5_convert_weights_refuses_out_that_is_src(tmp_path, tv_state):
    src = tmp_path / "w" / "x26.pth"
    src.parent.mkdir()
    torch.save(tv_state, src)
    before = src.read_bytes()
    (tmp_path / "link.pth").symlink_to(src)
    os.link(src, tmp_path / "hard.pth")
    for out in (
        src,
        tmp_path / "w" / ".." / "w" / "x26.pth",  # through ../
        tmp_path / "link.pth",  # a symlink to it
        tmp_path / "hard.pth",  # a hard link
    ):
        with pytest.raises(ValueError, match=r"is the source file .*x26.pth"):
            convert_checkpoint(src, out)
    with pytest.raises(ValueError, match="is the source file"):
        convert_checkpoint(tmp_path / "link.pth", src)  # the source through a symlink
    assert src.read_bytes() == before


def test_item5_convert_weights_report_counts_what_is_written_and_lists_what_was_left_out(
    tmp_path, tv_state
):
    from test_weights import caffe2_blobs, write_pickle

    blobs = caffe2_blobs(
        {k: v for k, v in tv_state.items()}
        | {"fc.weight": torch.zeros(3, 256), "fc.bias": torch.zeros(3)},
        fused=True,
    )
    heads = {
        "rpn_cls_logits_fpn2_w": np.zeros((3, 16, 1, 1), np.float32),
        "bbox_pred_b": np.zeros(8, np.float32),
    }
    src = tmp_path / "detector.pkl"
    write_pickle({"blobs": {**blobs, **heads}}, src)
    out = tmp_path / "converted.pth"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_weights.py"), str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    written = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert f"{len(written)} tensors written" in result.stdout
    assert "left out: 2 tensors that are not the ResNet's: bbox_pred_b, rpn_cls_logits_fpn2_w" in (
        result.stdout
    )
    record = torch.load(out, map_location="cpu", weights_only=True)["resnext_det"]
    assert record["source"]["left_out"] == ["bbox_pred_b", "rpn_cls_logits_fpn2_w"]


# ------------------------------------------------------------ 6: metadata parsed strictly, sidecars


def _safetensors(path, state, metadata):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


RECORD = {
    "input_format": "BGR",
    "pixel_mean": "[103.53, 116.28, 123.675]",
    "pixel_std": "[1, 1, 1]",
}


def test_item6_safetensors_metadata_booleans_and_numbers_are_parsed_strictly(tmp_path, tv_state):
    path = tmp_path / "w.safetensors"
    _safetensors(path, tv_state, {**RECORD, "stride_in_1x1": "False"})
    conventions = read_weights(path).conventions
    assert conventions.stride_in_1x1 is False  # bool("False") would be True
    assert conventions.pixel_mean == (103.53, 116.28, 123.675)
    _safetensors(path, tv_state, {**RECORD, "stride_in_1x1": "true"})
    assert read_weights(path).conventions.stride_in_1x1 is True
    for key, value, allowed in (
        ("stride_in_1x1", "no", "a boolean"),
        ("stride_in_1x1", "0", "a boolean"),
        ("pixel_mean", "[103.53, 116.28", "a list of 3 finite numbers"),
        ("pixel_mean", '["a", "b", "c"]', "a list of 3 finite numbers"),
        ("pixel_std", "[1, 1, NaN]", "a list of 3 finite numbers"),
        ("pixel_std", "[0, 1, 1]", "positive"),
        ("input_format", "XYZ", "one of RGB, BGR"),
    ):
        _safetensors(path, tv_state, {**RECORD, "stride_in_1x1": "false", key: value})
        with pytest.raises(CheckpointError, match=rf"w.safetensors'.*{key} = .* is not {allowed}"):
            read_weights(path)


def test_item6_sidecar_counts_only_when_its_sha256_matches_the_file(tmp_path, tv_state, caplog):
    path = tmp_path / "w.pth"
    torch.save(tv_state, path)
    sidecar = tmp_path / "w.pth.json"
    bgr = {"conventions": {**RECORD, "stride_in_1x1": False}}
    for stale in ({}, {"sha256": "0" * 64}):  # none recorded; another file's
        sidecar.write_text(json.dumps({**bgr, **stale}))
        with caplog.at_level(logging.WARNING, logger="resnext_det"):
            conventions = read_weights(path).conventions
        assert conventions.input_format == "RGB"  # the file's own (torchvision), not the sidecar's
        assert (
            "ignoring metadata sidecar" in caplog.text and "describes another file" in caplog.text
        )
        caplog.clear()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps({**bgr, "sha256": digest}))
    assert read_weights(path).conventions.input_format == "BGR"


# ------------------------------------------------------------------- 10: records and pickle sizes


@pytest.mark.parametrize("value", [5, "abc", [1, 2], [1, 2, True], {"r": 1}])
def test_item10_pixel_mean_not_three_numbers_names_file_and_key(tmp_path, tv_state, value):
    path = tmp_path / "w.pth"
    torch.save({"model": tv_state, "resnext_det": {"conventions": {"pixel_mean": value}}}, path)
    with pytest.raises(CheckpointError, match=rf"'{path}': pixel_mean = .* is not a list of 3"):
        read_weights(path)


# Run in a fresh process: peak memory is measured there, and today's reader crashes numpy
# (an object array of a declared 10**8 elements segfaults it) or raises MemoryError.
_BOMBS = textwrap.dedent(
    """
    import json, pickle, resource, sys
    import numpy as np
    from numpy._core.multiarray import _reconstruct, scalar
    from resnext_det.weights import CheckpointError, read_weights

    class Call:
        def __init__(self, *reduced):
            self.reduced = reduced
        def __reduce__(self):
            return self.reduced

    f4, shell = np.dtype("f4"), (np.ndarray, (0,), b"b")  # numpy pickles an empty shell, filled
    cases = {
        "setstate 64 TiB": Call(_reconstruct, shell, (1, (2**44,), f4, False, b"")),
        "object array": Call(_reconstruct, shell, (1, (10**8,), np.dtype("O"), False, [])),
        "reconstruct shape": Call(_reconstruct, (np.ndarray, (2**38,), b"b")),
        "ndarray call": Call(np.ndarray, ((2**38,), f4)),
        "huge scalar": Call(scalar, (np.dtype("V2000000000"), b"")),
    }
    out = {}
    for name, bomb in cases.items():
        path = f"{sys.argv[1]}/{name.replace(' ', '_')}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"conv1_w": bomb}, f, protocol=2)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_weights(path)
            error = None
        except CheckpointError as exc:
            error = str(exc)
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        out[name] = {"size": len(open(path, "rb").read()), "error": error, "grew_kib": grew}
    print(json.dumps(out))
    """
)


def test_item10_tiny_pickle_declaring_a_huge_array_is_refused_before_allocating(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", _BOMBS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, f"the reader crashed (rc {run.returncode}): {run.stderr[-2000:]}"
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        assert r["size"] < 300, (name, r["size"])  # a few hundred bytes at most
        assert r["error"] is not None, name
        assert f"{name.replace(' ', '_')}.pkl'" in r["error"], (name, r["error"])
        assert r["grew_kib"] < 64 * 1024, (name, r)  # peak memory grew by less than 64 MiB
        assert "truncated or corrupt" not in r["error"], (name, r["error"])  # said what it is
    assert "declares 70368744177664 bytes" in results["setstate 64 TiB"]["error"]
    assert "Python objects" in results["object array"]["error"]
    assert "calls numpy.ndarray" in results["ndarray call"]["error"]


# ------------------------------------------------------------------------------ 12: NaN/Inf weights


def test_item12_nan_and_inf_weights_are_refused_at_load_and_conversion(tmp_path, tv_state):
    bad = dict(tv_state)
    bad["layer1.0.conv1.weight"] = bad["layer1.0.conv1.weight"].clone()
    bad["layer1.0.conv1.weight"].view(-1)[:3] = float("nan")
    bad["layer4.1.bn3.running_var"] = bad["layer4.1.bn3.running_var"].clone()
    bad["layer4.1.bn3.running_var"][0] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(bad, path)
    message = (
        r"diverged.pth': 2 tensor\(s\) hold 4 NaN/Inf value\(s\): layer1.0.conv1.weight "
        r"\(3: 3 NaN, 0 Inf\), layer4.1.bn3.running_var \(1: 0 NaN, 1 Inf\)"
    )
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(make_resnext(TINY_SPEC), path)
    out = tmp_path / "out.pth"
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(path, out)
    assert not out.exists()
    # the one check, for export and anything else holding a state_dict
    with pytest.raises(CheckpointError, match=r"^the model: 1 tensor\(s\) hold 3 NaN/Inf"):
        check_finite({"a": bad["layer1.0.conv1.weight"], "n": torch.tensor([1, 2])}, "the model")
    check_finite(tv_state, "fine")  # finite weights pass


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_size_checks_keep_every_real_numpy_pickle(protocol):
    from resnext_det.weights.io import safe_pickle_load

    arrays = {
        "w": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "fortran": np.asfortranarray(np.ones((3, 2), np.float64)),
        "empty": np.zeros((0, 5), np.float32),
        "scalar": np.float32(2.5),
        "ints": np.array([1, 2, 3], np.int64),
    }
    loaded = safe_pickle_load(pickle.dumps(arrays, protocol=protocol))
    for key, value in arrays.items():
        assert type(loaded[key]) is type(value) and np.array_equal(loaded[key], value), key


def test_nested_or_self_referring_pickles_are_a_named_error(tmp_path):
    path = tmp_path / "deep.pkl"
    loop: list = []
    loop.append(loop)  # a list that holds itself
    n = 100_000  # lists nested 100k deep, written as opcodes (pickle.dump itself would recurse)
    deep = b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"."
    for data in (pickle.dumps(loop, 2), pickle.dumps({"blobs": {"conv1_w": loop}}, 2), deep):
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=r"deep.pkl' .* pickle file"):
            read_weights(path)


# ------------------------------------------------------------------------ fuzz: records and files

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["input_format", "pixel_mean", "pixel_std", "stride_in_1x1", "MODEL.PIXEL_MEAN", "INPUT.FORMAT",
     "mean", "std", "source", "__author__", "conventions"]
)  # fmt: skip


@FUZZ
@given(st.dictionaries(_keys, _values | st.text(max_size=40).map(json.dumps), max_size=6))
def test_fuzz_weights_records_give_conventions_or_a_named_error(record):
    from resnext_det.weights.records import conventions_from_metadata

    try:
        conventions = conventions_from_metadata(record, "'w.pth'")
    except CheckpointError as exc:
        assert str(exc).startswith("'w.pth': "), exc
        return
    if conventions is not None:  # what it accepted is what the config can take
        assert conventions.input_format in (None, "RGB", "BGR")
        for triple in (conventions.pixel_mean, conventions.pixel_std):
            assert triple is None or (len(triple) == 3 and all(np.isfinite(triple)))
        assert conventions.stride_in_1x1 in (None, True, False)


@FUZZ
@given(st.binary(min_size=1, max_size=400))
def test_fuzz_arbitrary_pickle_bytes_give_only_a_named_checkpoint_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "w.pkl"
    path.write_bytes(b"\x80\x02" + data)  # read as a pickle (its first byte says so)
    try:
        read_weights(path)
    except CheckpointError as exc:
        assert "w.pkl'" in str(exc), exc
    except ValueError as exc:  # a layout's own error (e.g. keys of another architecture)
        assert "w.pkl'" in str(exc), exc
