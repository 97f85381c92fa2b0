"""The foundation: imports, the detectron2 build without compiled ops, the offline wheelhouse."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_cfg
from detectron2 import model_zoo
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage


def test_everything_imports_and_model_zoo_configs_are_installed():
    import cv2  # noqa: F401
    import detectron2.layers  # noqa: F401
    import fvcore  # noqa: F401
    import pycocotools  # noqa: F401
    import torchvision  # noqa: F401

    import resnext_det

    # detectron2's model-zoo configs are installed with it, and resnext-det reads them.
    path = model_zoo.get_config_file("COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml")
    cfg = resnext_det.load_config(path)
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NUM_GROUPS) == (101, 32)
    assert cfg.MODEL.RESNETS.WIDTH_PER_GROUP == 8 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False


def test_missing_detectron2_gives_a_clear_message():
    code = "import sys; sys.modules['detectron2'] = None; import resnext_det"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "resnext_det needs detectron2" in result.stderr
    assert "tools/setup_env.sh" in result.stderr


def test_env_report():
    out = subprocess.run(
        [sys.executable, "-m", "resnext_det.env"], capture_output=True, text=True, check=True
    ).stdout
    import importlib.metadata
    import os

    import detectron2
    import torchvision

    # "KEY<spaces>VALUE" rows; each value must be the one this Python has, not just a label.
    rows = {line[:25].strip(): line[25:].strip() for line in out.splitlines() if line.strip()}
    assert rows["torch"] == torch.__version__
    assert rows["torchvision"] == torchvision.__version__
    version = importlib.metadata.version("detectron2")  # 0.6+pb1nocsrc4: the build, not 0.6
    assert rows["detectron2"].startswith(f"{version} from {os.path.dirname(detectron2.__file__)}")
    assert rows["CUDA available"] == str(torch.cuda.is_available())
    assert rows["CPU threads"] == str(torch.get_num_threads())
    ops = dict(op.split(": ") for op in rows["detectron2 compiled ops"].split(", "))
    assert "deform_conv_forward" in ops
    assert (ops["deform_conv_forward"] == "no") == _is_stand_in(), ops


def test_machine_info_and_environment_report():
    """One reporter: the benchmark's ``machine`` record and the training log's text."""
    from resnext_det.env import environment_report, machine_info

    info = machine_info("cpu")
    assert info["torch"] == torch.__version__ and info["python"] == sys.version.split()[0]
    assert info["threads"] == torch.get_num_threads() and info["cpu_count"] >= 1
    assert info["cuda_available"] is torch.cuda.is_available()
    assert "gpu" not in info  # asked about the CPU
    assert isinstance(info["cpu"], str) and info["cpu"]
    report = environment_report()
    assert torch.__version__ in report


def _is_stand_in() -> bool:
    from detectron2 import _C

    return bool(getattr(_C, "IS_STAND_IN", False))


@pytest.mark.skipif(not _is_stand_in(), reason="detectron2 was built with its compiled ops")
def test_compiled_ops_raise_naming_the_op():
    from detectron2 import _C
    from detectron2.layers import nms_rotated

    with pytest.raises(RuntimeError, match="compiled op 'deform_conv_forward' is not available"):
        _C.deform_conv_forward  # noqa: B018
    boxes = torch.tensor([[10.0, 10.0, 5.0, 5.0, 0.0]])
    with pytest.raises(RuntimeError, match="'nms_rotated'"):
        nms_rotated(boxes, torch.ones(1), 0.5)
    assert not hasattr(_C, "__wrapped__")  # dunder probes stay AttributeErrors


@pytest.mark.skipif(not _is_stand_in(), reason="detectron2 was built with its compiled ops")
def test_faster_rcnn_never_reaches_a_compiled_op(monkeypatch):
    """Training and inference of axis-aligned Faster R-CNN touch no attribute of detectron2._C."""
    from detectron2 import _C

    reached = []
    original = _C.__getattr__

    def record(name):
        reached.append(name)
        return original(name)

    monkeypatch.setattr(_C, "__getattr__", record)
    model = build_model(tiny_cfg())
    inst = Instances((64, 80))
    inst.gt_boxes = Boxes(torch.tensor([[5.0, 6.0, 40.0, 50.0]]))
    inst.gt_classes = torch.tensor([1])
    with EventStorage(0):
        losses = model([{"image": torch.rand(3, 64, 80) * 255, "instances": inst}])
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        model([{"image": torch.rand(3, 64, 80) * 255}])
    assert reached == []


def _bundle():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import bundle
    finally:
        sys.path.remove(str(REPO / "tools"))
    return bundle


def _fake_wheel(folder, name: str, version: str, requires=(), tag: str = "py3-none-any"):
    """A wheel file with only its METADATA: what the planner reads."""
    import zipfile

    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-{tag}.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", meta)
    return path


@pytest.fixture
def fake_wheelhouse(tmp_path):
    w = tmp_path / "whl"
    w.mkdir()
    _fake_wheel(
        w, "resnext-det", "0.1.0", ["torch>=2.0", "fvcore>=0.1.5", "opencv-python-headless"]
    )
    _fake_wheel(w, "detectron2", "0.6", ["setuptools<81", "termcolor>=1.1", "fvcore<0.1.6"])
    _fake_wheel(w, "fvcore", "0.1.5", ["yacs>=0.1.6"])
    _fake_wheel(w, "yacs", "0.1.8")
    _fake_wheel(w, "termcolor", "3.1.0")
    _fake_wheel(w, "setuptools", "80.9.0")
    return w


LINUX_312 = {
    "python_version": "3.12",
    "python_full_version": "3.12.1",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.12.1",
}


def test_install_plan_takes_exactly_what_is_missing(fake_wheelhouse):
    """The machine's torch and its opencv-python (another name for cv2) stay; its termcolor fits
    and stays; its setuptools 81 does not fit detectron2 and is shadowed; the rest is installed."""
    installed = {"torch": "2.11.0", "opencv-python": "4.10.0", "termcolor": "2.4.0"}
    installed["setuptools"] = "81.0.0"
    plan = _bundle().plan_install(fake_wheelhouse, installed=installed, environment=LINUX_312)
    names = sorted(w.name.split("-")[0] for w in plan.install)
    assert names == ["detectron2", "fvcore", "resnext_det", "setuptools", "yacs"]
    assert plan.replace == {"setuptools": "81.0.0"}
    assert plan.present == {"torch": "2.11.0", "opencv-python": "4.10.0", "termcolor": "2.4.0"}
    assert "to install (5)" in plan.summary()


def test_install_plan_names_what_neither_has(fake_wheelhouse):
    bundle = _bundle()
    with pytest.raises(RuntimeError, match=r"torch>=2\.0 \(not installed; the machine's own\)"):
        bundle.plan_install(
            fake_wheelhouse, installed={"opencv-python": "4.10"}, environment=LINUX_312
        )
    (next(fake_wheelhouse.glob("yacs-*.whl"))).unlink()
    with pytest.raises(RuntimeError, match=r"yacs>=0\.1\.6 \(not installed; not in .*whl\)"):
        bundle.plan_install(
            fake_wheelhouse,
            installed={"torch": "2.11.0", "opencv-python-headless": "4.10"},
            environment=LINUX_312,
        )


@pytest.mark.slow
def test_offline_wheelhouse_for_python_312(tmp_path):
    """The bundle for Python 3.12 builds (from the package index) and holds every distribution
    resnext-det and detectron2 need there, torch/torchvision excepted."""
    verify_wheelhouse = _bundle().verify_wheelhouse

    out = tmp_path / "wheelhouse"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "build_bundle.py"),
            "--python-version",
            "3.12",
            "--out",
            str(out),
        ],
        check=True,
        cwd=REPO,
    )
    names = verify_wheelhouse(out, python_version="3.12")
    for needed in (
        "resnext-det",
        "detectron2",
        "fvcore",
        "pycocotools",
        "opencv-python-headless",
        "numpy",
        "iopath",
        "omegaconf",
        "hydra-core",
        "antlr4-python3-runtime",
    ):
        assert needed in names
    assert not any("torch" in n for n in names)
    (next(out.glob("pycocotools-*.whl"))).unlink()
    with pytest.raises(RuntimeError, match="lacks wheels for Python 3.12.*pycocotools"):
        verify_wheelhouse(out, python_version="3.12")
