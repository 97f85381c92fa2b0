"""The layer contract (tools/check_layers.py) holds for the package, and catches breaches."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location(
        "check_layers", REPO / "tools" / "check_layers.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_layers", module)
    spec.loader.exec_module(module)
    return module


def test_package_keeps_its_layers_and_has_no_cycles():
    assert _checker().check(REPO) == []


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "resnext_det" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_upward_import_facade_import_cycle_and_unplaced_module_are_caught(tmp_path):
    root = _fake_package(
        tmp_path,
        {
            "__init__.py": "from .backbone import x\n",
            "backbone.py": "def f():\n    from .training.trainer import T\n",  # core -> jobs
            "spec.py": "import resnext_det\n",  # the facade
            "weights/__init__.py": "",
            "weights/a.py": "from .b import y\n",
            "weights/b.py": "from . import a\n",  # a <-> b
            "training/__init__.py": "",
            "training/trainer.py": "T = 1\n",
            "stray.py": "",
        },
    )
    problems = "\n".join(_checker().check(root))
    assert "resnext_det.backbone (core) imports resnext_det.training.trainer (jobs)" in problems
    assert "resnext_det.spec imports the package facade" in problems
    assert "import cycle: resnext_det.weights.a -> resnext_det.weights.b" in problems
    assert "resnext_det.stray has no layer" in problems
