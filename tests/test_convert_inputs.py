"""What ``resnext-det convert`` and every reader of weights make of inputs they cannot use: a
``.safetensors`` output (written as safetensors, read back with its conventions), a suffix that
lies about the container, a forced layout that finds no ResNet, keys that are not strings, a
tensor of the wrong shape, and a TorchScript program. Each is one line naming the file and what
is wrong, never a traceback (AttributeError, SafetensorError, IndexError) or a nearly empty file.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_SPEC

from resnext_det import make_resnext
from resnext_det.commands.convert import main as convert_main
from resnext_det.weights import (
    CheckpointError,
    convert_checkpoint,
    read_weights,
)
from resnext_det.weights.reader import recorded_classes


@pytest.fixture
def tv_file(tmp_path, tv_state):
    path = tmp_path / "tv.pth"
    torch.save(tv_state, path)
    return path


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run ``resnext-det convert ARGV``; it must fail with exit 2 and one ``error:`` line."""
    assert convert_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convert_weights: error: ") and "\n" not in err, err
    return err


# ----------------------------------------------------------------- 1: .safetensors in and out


def test_convert_to_safetensors_writes_safetensors_that_read_back_the_same(
    tmp_path, tv_file, tv_state, capsys
):
    from safetensors import safe_open

    out = tmp_path / "out.safetensors"
    assert convert_main([str(tv_file), str(out)]) == 0
    capsys.readouterr()
    with safe_open(str(out), framework="pt") as f:  # a real safetensors file
        assert len(list(f.keys())) == len(tv_state)
    source, written = read_weights(tv_file), read_weights(out)
    assert written.container == "safetensors"
    assert written.conventions.cfg_values() == source.conventions.cfg_values()
    assert written.conventions.source == source.conventions.source
    assert written.architecture == source.architecture
    assert written.resnet.keys() == source.resnet.keys()
    assert all(torch.equal(written.resnet[k], v) for k, v in source.resnet.items())
    # read back by the command too, into torch and into safetensors again
    again = tmp_path / "again.pth"
    assert convert_main([str(out), str(again)]) == 0
    assert "X-26-2x4d" in capsys.readouterr().out
    assert read_weights(again).conventions.cfg_values() == source.conventions.cfg_values()
    assert convert_main([str(out), str(tmp_path / "again.safetensors")]) == 0


def test_a_safetensors_name_on_another_container_is_one_line_naming_it(tmp_path, tv_state, capsys):
    zipped = tmp_path / "zip.safetensors"
    torch.save(tv_state, zipped)  # what convert wrote under this name before
    with pytest.raises(CheckpointError, match=r"zip.safetensors' is named .* torch zip"):
        read_weights(zipped)
    err = _one_line_error(capsys, [zipped, tmp_path / "x.pth"])
    assert "zip.safetensors" in err and "torch zip checkpoint" in err
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps({"conv1_w": np.zeros(3, np.float32)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"pickled.safetensors' .*not a safetensors .*pickle"):
        read_weights(pickled)
    assert not (tmp_path / "x.pth").exists()


# ---------------------------------------------------------- 2: a layout that finds no ResNet


def test_forced_layout_that_finds_no_resnet_is_refused(tmp_path, tv_file, capsys):
    out = tmp_path / "out.pth"
    with pytest.raises(
        CheckpointError,
        match=r"tv.pth' was to be read as caffe2 .*conv1.weight.*look like torchvision's.*"
        r"--format auto",
    ):
        convert_checkpoint(tv_file, out, format="caffe2")
    err = _one_line_error(capsys, ["--format", "caffe2", tv_file, out])
    assert "tv.pth" in err and "caffe2" in err and "--format auto" in err
    with pytest.raises(CheckpointError, match=r"not detectron2's .*look like torchvision's"):
        read_weights(tv_file, "detectron2")
    assert not out.exists()
    # the same file, read as what it is, converts
    assert convert_checkpoint(tv_file, out, format="timm").written > 100


def test_a_file_whose_layout_holds_no_resnet_is_not_converted(tmp_path, capsys):
    stem_only = tmp_path / "stem.pkl"
    stem_only.write_bytes(pickle.dumps({"conv1_w": np.zeros((8, 3, 7, 7), np.float32)}, protocol=2))
    out = tmp_path / "out.pkl"
    with pytest.raises(CheckpointError, match=r"stem.pkl' \(caffe2 layout\) holds no Res.*conv1_w"):
        convert_checkpoint(stem_only, out)
    assert "holds no ResNet" in _one_line_error(capsys, [stem_only, out])
    assert not out.exists()


# ---------------------------------------------------------------- 3: keys that are not strings


def test_keys_that_are_not_strings_are_one_line_naming_the_key(tmp_path, tv_state, capsys):
    top = tmp_path / "intkey.pth"
    torch.save({1: torch.zeros(1)}, top)
    with pytest.raises(CheckpointError, match=r"intkey.pth': key 1 is of type int, not a string"):
        read_weights(top)
    err = _one_line_error(capsys, [top, tmp_path / "o.pth"])
    assert "intkey.pth" in err and "key 1 " in err
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {**tv_state, 7: torch.zeros(1)}, "iteration": 3}, wrapped)
    with pytest.raises(CheckpointError, match=r"wrapped.pth': key 7 under 'model' is of type int"):
        read_weights(wrapped)
    mixed = tmp_path / "mixed.pth"
    torch.save({"model": dict(tv_state), 2.5: "x"}, mixed)
    with pytest.raises(CheckpointError, match=r"mixed.pth': key 2.5 is of type float"):
        recorded_classes(mixed)  # the other reader of whole files
    blobs = tmp_path / "blobs.pkl"
    blobs.write_bytes(pickle.dumps({"blobs": {None: np.zeros(1, np.float32)}}, protocol=2))
    with pytest.raises(CheckpointError, match=r"blobs.pkl': key None under 'blobs' is of type"):
        read_weights(blobs)


# ------------------------------------------------------------------ 4: a tensor of wrong shape


def test_a_tensor_of_the_wrong_shape_is_refused_naming_key_and_shapes(tmp_path, tv_state, capsys):
    bad = dict(tv_state)
    bad["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "badshape.pth"
    torch.save(bad, path)
    message = (
        r"badshape.pth': 'layer1.0.conv1.weight' \(res2.0.conv1.weight\) has shape \(3, 3, 1, 1\)"
        r", but the X-26-2x4d .* needs \(8, 8, 1, 1\)"
    )
    with pytest.raises(CheckpointError, match=message):
        read_weights(path)
    out = tmp_path / "out.pth"
    assert "(8, 8, 1, 1)" in _one_line_error(capsys, [path, out])
    assert not out.exists()
    for key, value in (  # a later stage's norm, a shortcut
        ("layer3.1.bn2.running_var", torch.ones(5)),
        ("layer2.0.downsample.0.weight", torch.zeros(32, 16, 3, 3)),
    ):
        torch.save({**tv_state, key: value}, path)
        with pytest.raises(CheckpointError, match=rf"'{key}' .*has shape"):
            read_weights(path)
    # the tensors the architecture is read from: a named error, not an IndexError
    for value in (torch.zeros(8), torch.zeros(8, 0, 3, 3), torch.zeros(8, 3, 3, 3)):
        torch.save({**tv_state, "layer1.0.conv2.weight": value}, path)
        with pytest.raises(CheckpointError, match=r"'layer1.0.conv2.weight' has shape .*no ResNet"):
            read_weights(path)
    # consistent weights pass, in detectron2's layout too
    torch.save({"model": make_resnext(TINY_SPEC).state_dict()}, path)
    assert read_weights(path).architecture.name == "X-26-2x4d"


# -------------------------------------------------------------------------- 5: TorchScript


def test_a_torchscript_program_is_named_as_one_and_warns_nothing(tmp_path, capsys):
    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match=r"m.pt' is a TorchScript program .*state_dict"):
            read_weights(path)
    assert not [str(w.message) for w in caught], [str(w.message) for w in caught]
    err = _one_line_error(capsys, [path, tmp_path / "o.pth"])
    assert "TorchScript program" in err and "weights_only" not in err
    assert "truncated or corrupt" not in err
