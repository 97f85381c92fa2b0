"""Configs by name (resnext_det.model_zoo), the resnext-det console command, and pip-only use:
a wheel built from this tree, installed into a fresh virtual environment, used from a folder
outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import tomllib
from conftest import REPO
from detectron2.config import CfgNode
from omegaconf import DictConfig

from resnext_det import cli, model_zoo


def test_names_are_the_files_of_configs():
    names = model_zoo.list_configs()
    on_disk = sorted(
        p.relative_to(REPO / "configs").as_posix()
        for p in (REPO / "configs").rglob("*")
        if p.suffix in (".yaml", ".py") and "__pycache__" not in p.parts
    )
    assert names == on_disk
    assert "lazy/faster_rcnn_X_50_32x4d_FPN_1x.py" in names
    path = model_zoo.get_config_file("demo/faster_rcnn_X_demo.yaml")
    assert Path(path) == REPO / "configs" / "demo" / "faster_rcnn_X_demo.yaml"


def test_get_config_gives_yacs_and_lazy_configs():
    cfg = model_zoo.get_config("faster_rcnn_X_50_32x4d_FPN_1x.yaml", ["MODEL.DEVICE", "cpu"])
    assert isinstance(cfg, CfgNode) and cfg.MODEL.RESNETS.NUM_GROUPS == 32
    assert cfg.MODEL.DEVICE == "cpu"
    lazy = model_zoo.get_config("lazy/faster_rcnn_X_50_32x4d_FPN_1x.py", ["train.max_iter=7"])
    assert isinstance(lazy, DictConfig) and lazy.train.max_iter == 7


def test_unknown_and_escaping_names_are_refused():
    with pytest.raises(FileNotFoundError, match="there are: .*faster_rcnn_R_50_FPN_1x.yaml"):
        model_zoo.get_config_file("faster_rcnn_R_51_FPN_1x.yaml")
    with pytest.raises(ValueError, match="stay inside it"):
        model_zoo.get_config_file("../pyproject.toml")
    with pytest.raises(ValueError, match="stay inside it"):
        model_zoo.get_config_file(str(REPO / "configs" / "faster_rcnn_R_50_FPN_1x.yaml"))


def test_get_falls_back_to_the_cpu_without_cuda(monkeypatch):
    # Issue 27: the configs say MODEL.DEVICE cuda; detectron2's zoo builds on the CPU without it.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = model_zoo.get("demo/faster_rcnn_X_demo.yaml")
    assert next(model.parameters()).device.type == "cpu"


def test_trained_names_detectron2s_checkpoint_with_its_conventions():
    from detectron2 import model_zoo as d2_zoo

    url, conventions = model_zoo.trained_weights("faster_rcnn_X_101_32x8d_FPN_3x.yaml")
    assert url == d2_zoo.get_checkpoint_url("COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml")
    assert url.endswith("/139173657/model_final_68b088.pkl")
    # Caffe2-style X-101: BGR, its own PIXEL_STD, the stride in the 3x3 (not the config's RGB).
    assert conventions == {
        "INPUT.FORMAT": "BGR",
        "MODEL.PIXEL_MEAN": [103.53, 116.28, 123.675],
        "MODEL.PIXEL_STD": [57.375, 57.12, 58.395],
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    }
    assert model_zoo.trained_weights("faster_rcnn_R_50_FPN_1x.yaml")[1][
        "MODEL.RESNETS.STRIDE_IN_1X1"
    ]  # MSRA R-50: the stride in the 1x1
    with pytest.raises(ValueError, match="no trained checkpoint for config 'faster_rcnn_X_50"):
        model_zoo.get("faster_rcnn_X_50_32x4d_FPN_1x.yaml", trained=True)


def test_trained_model_is_loaded_from_the_mirror_without_downloading(tmp_path, monkeypatch):
    import pickle

    import torch

    from resnext_det.weights.hub import MIRROR_ENV

    name = "faster_rcnn_R_50_FPN_1x.yaml"
    torch.manual_seed(3)
    reference = model_zoo.get(name, device="cpu")
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    url, _ = model_zoo.trained_weights(name)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with open(mirror / url.rsplit("/", 1)[1], "wb") as f:  # a detectron2 zoo file's shape
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(
        "resnext_det.weights.hub.urlopen", lambda *a, **k: pytest.fail("downloaded")
    )
    model = model_zoo.get(name, trained=True, device="cpu")
    assert model.input_format == "BGR" and model.pixel_std.flatten().tolist() == [1.0, 1.0, 1.0]
    got = model.state_dict()
    assert all(torch.equal(got[k], torch.as_tensor(v)) for k, v in state.items())


def test_pyproject_lists_every_package_folder():
    """The wheel's packages are listed by hand (configs/ is mapped in): a new subpackage that is
    not listed would be missing from pip installs."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "resnext_det").rglob("__init__.py")
    }
    configs = {
        ".".join(("resnext_det", *p.relative_to(REPO).parts))
        for p in [REPO / "configs", *(REPO / "configs").rglob("*")]
        if p.is_dir() and p.name != "__pycache__"
        and all(part.isidentifier() for part in p.relative_to(REPO).parts)
    }  # fmt: skip
    assert set(setup["packages"]) == folders | configs
    assert setup["package-dir"] == {"resnext_det.configs": "configs"}


def test_cli_runs_each_subcommand(capsys):
    """Each subcommand's own parser answers --help under its ``resnext-det NAME`` name (which
    subcommands exist is tests/test_commands.py's, from the command modules themselves)."""
    assert cli.main(["no-such-command"]) == 2
    assert "unknown subcommand 'no-such-command'" in capsys.readouterr().err
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            cli.main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: resnext-det " + name in capsys.readouterr().out


def _source_tree(dest: Path) -> Path:
    """The files git would commit (tracked and new, not ignored): no stale build/ or caches."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    src = _source_tree(tmp_path / "src")
    run = lambda *cmd, **kw: subprocess.run(  # noqa: E731
        [str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=900, **kw
    )
    built = run(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation",
                "-w", tmp_path / "dist", cwd=tmp_path)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("resnext_det-*.whl")

    # A fresh environment that reuses this one's torch and detectron2 (through a .pth file; its
    # own site-packages comes first, so the wheel's resnext_det wins over any editable install).
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    (Path(purelib.stdout.strip()) / "reuse_torch_detectron2.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    installed = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                    "--no-index", wheel)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = textwrap.dedent(
        """
        import os, sys
        import resnext_det
        from resnext_det import model_zoo
        from resnext_det.demo import run_demo
        here = os.path.dirname(resnext_det.__file__)
        assert here.startswith(sys.prefix), here
        assert model_zoo.config_root() == __import__("pathlib").Path(here) / "configs"
        cfg = model_zoo.get_config("faster_rcnn_X_50_32x4d_FPN_1x.yaml")
        assert cfg.MODEL.RESNETS.NUM_GROUPS == 32
        model = model_zoo.get("demo/faster_rcnn_X_demo.yaml", device="cpu")
        print("params", sum(p.numel() for p in model.parameters()))
        lazy = model_zoo.get("lazy/tests/faster_rcnn_tiny.py", device="cpu")
        # Issue 27: no device on a machine without CUDA builds on the CPU (as detectron2's zoo);
        # trained=True names detectron2's zoo checkpoint (nothing downloaded here).
        import torch
        if not torch.cuda.is_available():
            assert next(model_zoo.get("demo/faster_rcnn_X_demo.yaml").parameters()).device.type \
                == "cpu"
        url, conventions = model_zoo.trained_weights("faster_rcnn_X_101_32x8d_FPN_3x.yaml")
        assert url.endswith("/139173657/model_final_68b088.pkl"), url
        assert conventions["INPUT.FORMAT"] == "BGR", conventions
        result = run_demo("demo_out", schedule="smoke")
        print("exports", [str(p) for p in result.exports])
        """
    )
    used = run(python, "-c", script, cwd=outside)
    assert used.returncode == 0, used.stderr[-4000:]
    assert "exports" in used.stdout
    assert (outside / "demo_out" / "comparison" / "comparison.md").is_file()
    for model in ("model_1", "model_2"):  # TensorBoard events beside each demo run
        for run_dir in [outside / "demo_out" / model / f"seed_{k}" for k in range(3)]:
            assert list(run_dir.glob("events.out.tfevents.*")), run_dir
            assert (run_dir / "metrics.json").is_file()
    helped = run(venv / "bin" / "resnext-det", "--help", cwd=outside)
    assert helped.returncode == 0 and "lazy-train" in helped.stdout
    # Issue 27: a packaged config by name on a command's --config-file, from outside the
    # checkout; the VOC conversion by its console name.
    named = run(venv / "bin" / "resnext-det", "complexity", "--config-file",
                "raccoon/faster_rcnn_X_26_scratch_raccoon.yaml", cwd=outside)  # fmt: skip
    assert named.returncode == 0, named.stderr[-2000:]
    assert "using resnext_det's packaged" in named.stderr and "raccoon" in named.stdout
    voc = outside / "voc"
    (voc / "xml").mkdir(parents=True)
    (voc / "img").mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 90, 90)).save(voc / "img" / "a.jpg")
    (voc / "xml" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>40</width><height>30</height>"
        "<depth>3</depth></size><object><name>raccoon</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>20</xmax><ymax>25</ymax></bndbox></object></annotation>"
    )
    converted = run(venv / "bin" / "resnext-det", "voc-to-coco", "--xml-dir", voc / "xml",
                    "--image-dir", voc / "img", "--out", voc / "coco.json",
                    cwd=outside)  # fmt: skip
    assert converted.returncode == 0, converted.stderr[-2000:]
    assert "raccoon" in (voc / "coco.json").read_text()
