"""Every command: one home (resnext_det/commands), registered in ``resnext-det`` and shimmed in
tools/, and one contract for a user's mistake: a line naming it, exit status 2, no traceback."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO

from resnext_det import cli

COMMANDS_DIR = REPO / "resnext_det" / "commands"


def _command_modules() -> set[str]:
    """The modules of resnext_det/commands that define a ``main`` (read from the source)."""
    found = set()
    for path in COMMANDS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            found.add(path.stem)
    return found


def test_every_command_module_is_a_subcommand_and_a_tool():
    registered = {target.split(":")[0].rsplit(".", 1)[1] for target, _ in cli.COMMANDS.values()}
    assert registered == _command_modules()
    assert all(t.endswith(":main") for t, _ in cli.COMMANDS.values())
    shims = {
        mod
        for tool in (REPO / "tools").glob("*.py")
        for mod in _command_modules()
        if f"from resnext_det.commands.{mod} import main" in tool.read_text()
    }
    assert shims == _command_modules()
    # argparse lives in the commands (and the benchmarks' own tools), not in the library.
    for path in (REPO / "resnext_det").rglob("*.py"):
        if path.parent != COMMANDS_DIR:
            assert "ArgumentParser(" not in path.read_text(), path


def _write(tmp_path):
    missing = tmp_path / "missing.yaml"
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text('MODEL:\n  DEVICE: !!python/object/apply:os.system ["echo pwned"]\n')
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img.png")
    gt = {
        "images": [{"id": 1, "file_name": "img.png", "height": 32, "width": 32}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return missing, unsafe, folder


# Each command's arguments around a config file (CFG) it must read before doing anything.
CASES = {
    "train": lambda cfg, tmp: ["--config-file", cfg],
    "train --eval-only": lambda cfg, tmp: ["--config-file", cfg, "--eval-only"],
    "predict": lambda cfg, tmp: [
        "--config-file", cfg, "--input", str(tmp / "img.png"), "--output", str(tmp / "o"),
    ],
    "export": lambda cfg, tmp: [
        "--config-file", cfg, "--weights", str(tmp / "w.pth"), "--format", "detectron2",
        "--out", str(tmp / "o.pth"),
    ],
    "compare": lambda cfg, tmp: [
        "--model", f"A={cfg}:{tmp / 'w.pth'}", "--coco-json", str(tmp / "gt.json"),
        "--image-root", str(tmp),
    ],
    "complexity": lambda cfg, tmp: ["--config-file", cfg],
    "sweep": lambda cfg, tmp: [
        "--config-file", cfg, "--cardinalities", "1", "2", "--runs", "1", "--out", str(tmp / "s"),
    ],
}  # fmt: skip


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnext_det.cli", *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_missing_unsafe_or_folder_config_is_one_line(tmp_path, case):
    name, *flags = case.split()
    if name not in cli.COMMANDS:
        pytest.skip(f"no {name} command")
    for config, said in zip(_write(tmp_path), ("does not exist", "Python tags", "is a folder")):
        proc = _run([name, *CASES[case](str(config), tmp_path), *flags])
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (case, config, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert len([ln for ln in lines if "error:" in ln]) == 1 and said in lines[-1], lines
        assert config.name in lines[-1] and "pwned" not in proc.stdout


@pytest.mark.slow
def test_lazy_train_refuses_in_one_line(tmp_path):
    missing, unsafe, folder = _write(tmp_path)
    syntax = tmp_path / "broken.py"
    syntax.write_text("model = (\n")
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('a config that raises')\n")
    for path in (missing, unsafe, folder, syntax, raises, tmp_path / "missing.py"):
        proc = _run(["lazy-train", "--config-file", str(path)])
        assert proc.returncode == 2, (path, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert path.name in proc.stderr.strip().splitlines()[-1]


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    from resnext_det.commands.common import command
    from resnext_det.errors import ConfigError

    @command("tool")
    def refuses(argv):
        raise ConfigError("MODEL.X must be 1;\n got 2")

    @command("tool")
    def buggy(argv):
        raise AttributeError("a bug")

    assert refuses([]) == 2
    assert capsys.readouterr().err == "tool: error: MODEL.X must be 1; got 2\n"
    with pytest.raises(AttributeError):
        buggy([])
    monkeypatch.setenv("RESNEXT_DET_TRACEBACK", "1")
    with pytest.raises(ConfigError):
        refuses([])


@pytest.mark.slow
def test_train_names_a_weights_folder_and_writes_nothing_for_a_missing_dataset(tmp_path):
    """A folder as MODEL.WEIGHTS is called a folder; --register with a missing json is refused
    before OUTPUT_DIR gets a config.yaml."""
    tiny = str(REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml")
    out = tmp_path / "out"
    proc = _run(
        ["train", "--config-file", tiny, "MODEL.WEIGHTS", str(tmp_path), "OUTPUT_DIR", str(out)]
    )
    assert proc.returncode == 2 and "is a folder, not a weights file" in proc.stderr, proc.stderr
    proc = _run([
        "train", "--config-file", tiny, "--register", "mine", str(tmp_path / "gone.json"),
        str(tmp_path), "DATASETS.TRAIN", "('mine',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out),
    ])  # fmt: skip
    assert proc.returncode == 2 and "gone.json" in proc.stderr, proc.stderr
    assert not (out / "config.yaml").exists()
