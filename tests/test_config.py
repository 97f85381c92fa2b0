"""resnext_det.load_config: the one config loader; yaml is loaded without running code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from detectron2 import model_zoo

import resnext_det
from resnext_det.config import load_config, load_yaml_tree
from resnext_det.errors import BadFileError, ConfigError

REPO = Path(__file__).resolve().parents[1]


def _evil_yaml(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'OUTPUT_DIR: !!python/object/apply:os.system ["touch {marker}"]\n')
    return path, marker


def test_python_tag_is_refused_and_runs_nothing(tmp_path):
    path, marker = _evil_yaml(tmp_path)
    with pytest.raises(ConfigError, match=r"evil\.yaml.*python/object/apply:os\.system"):
        load_config(path)
    assert not marker.exists()


def test_python_tag_in_a_base_is_refused(tmp_path):
    evil, marker = _evil_yaml(tmp_path)
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {evil.name}\nSOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(child)
    assert not marker.exists()


def test_train_net_refuses_python_tag_before_anything_runs(tmp_path):
    path, marker = _evil_yaml(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "python/object/apply:os.system" in proc.stderr
    assert not marker.exists()


def test_opt_in_loads_a_trusted_tag(tmp_path):
    path = tmp_path / "tagged.yaml"
    path.write_text('SOLVER:\n  BASE_LR: !!python/object/apply:float ["0.25"]\n')
    with pytest.raises(ConfigError):
        load_config(path)
    assert load_config(path, allow_unsafe_yaml=True).SOLVER.BASE_LR == 0.25


def test_detectron2_model_zoo_retinanet_stays_loadable():
    """Base-RetinaNet.yaml computes its anchor sizes with an eval tag; it ships with detectron2."""
    cfg = load_config(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    assert len(cfg.MODEL.ANCHOR_GENERATOR.SIZES) == 5
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES[0][0] == 32


def test_project_configs_need_no_tag():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        load_yaml_tree(path)  # raises on a Python tag


def test_base_loop_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    with pytest.raises(
        ConfigError, match=r"_BASE_ chain loops: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"
    ):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"SOLVER:\n  BASE_LR: \xff\xfe\n", r"not a UTF-8 text file \(byte 19"),
        (b"SOLVER: [unclosed\n", "not valid yaml"),
        (b"- 1\n- 2\n", "not a mapping"),
        (b"SOLVER:\n  NOT_A_KEY: 1\n", "NOT_A_KEY"),
        (b"_BASE_: missing.yaml\n", "missing.yaml.*does not exist"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value)
    assert isinstance(info.value, BadFileError)


def test_overrides_and_base():
    base = load_config(REPO / "configs" / "faster_rcnn_X_50_32x4d_FPN_1x.yaml")
    assert base.MODEL.BACKBONE.NAME == "build_resnext_fpn_backbone"
    base.freeze()
    cfg = resnext_det.load_config(None, ["SOLVER.BASE_LR", "0.5"], base=base)
    assert cfg.SOLVER.BASE_LR == 0.5 and base.SOLVER.BASE_LR != 0.5
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["SOLVER.BASE_LR"])
    with pytest.raises(ConfigError, match="NO_SUCH"):
        load_config(None, ["SOLVER.NO_SUCH", "1"])


def _entry_points():
    """Every place that loads a user's yaml, as a function of the path."""
    from resnext_det.demo import demo_config
    from resnext_det.evaluation.inference import config_complexity
    from resnext_det.export import export_backbone
    from resnext_det.weights import explicit_keys

    return {
        "export": lambda p: export_backbone(p, p, "detectron2", p.with_suffix(".pth")),
        "compare --model": lambda p: config_complexity(p),
        "demo": lambda p: demo_config(p, p.parent / "out"),
        "conventions' explicit keys": lambda p: explicit_keys(str(p)),
        "complexity tool": lambda p: subprocess.run(
            [sys.executable, str(REPO / "tools" / "complexity.py"), "--config-file", str(p)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ),
    }


@pytest.mark.parametrize("entry", list(_entry_points()))
def test_every_entry_point_refuses_python_tags(tmp_path, entry):
    path, marker = _evil_yaml(tmp_path)
    with pytest.raises((ConfigError, subprocess.CalledProcessError)) as info:
        _entry_points()[entry](path)
    if isinstance(info.value, subprocess.CalledProcessError):
        assert "python/object/apply:os.system" in info.value.stderr
    assert not marker.exists()


def test_a_packaged_config_name_works_where_no_such_file_exists(tmp_path, monkeypatch, caplog):
    # Issue 27: after `pip install`, `--config-file raccoon/...yaml` names a packaged config.
    from resnext_det import model_zoo
    from resnext_det.commands.complexity import main as complexity
    from resnext_det.lazy import load_lazy_config

    monkeypatch.chdir(tmp_path)
    name = "tests/faster_rcnn_tiny.yaml"
    with caplog.at_level("WARNING", logger="resnext_det.config"):
        cfg = load_config(name)
    packaged = load_config(model_zoo.get_config_file(name))
    assert cfg.MODEL.RESNETS.DEPTH == packaged.MODEL.RESNETS.DEPTH
    assert model_zoo.get_config_file(name) in caplog.text  # says which file was used
    assert load_lazy_config("lazy/faster_rcnn_X_50_32x4d_FPN_1x.py").model is not None
    assert complexity(["--config-file", "demo/faster_rcnn_X_demo.yaml"]) == 0
    # A real file of that name in the current folder wins.
    (tmp_path / "tests").mkdir()
    (tmp_path / name).write_text("MODEL:\n  RESNETS:\n    DEPTH: 101\n")
    assert load_config(name).MODEL.RESNETS.DEPTH == 101
    with pytest.raises(ConfigError, match="nor is it a packaged config name"):
        load_config("no/such.yaml")
