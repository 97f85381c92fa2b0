"""Bad configuration reaching tools/train_net.py ends in a message naming the culprit (the rest of
docs/reliability.md's table is tested next to the code it concerns)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"


def train_net(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "train_net.py"), *args, "OUTPUT_DIR", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip


def test_unknown_config_key_on_the_command_line(tmp_path):
    result = train_net(
        "--config-file", str(TINY), "MODEL.RESNETS.CARDINALITY", "32", tmp_path=tmp_path
    )
    assert result.returncode != 0
    assert "Non-existent key: MODEL.RESNETS.CARDINALITY" in result.stderr  # yacs


def test_unknown_config_key_in_a_yaml_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f'_BASE_: "{TINY}"\nMODEL:\n  RESNEXT:\n    BLOCKFORM: "grouped"\n')
    result = train_net("--config-file", str(config), tmp_path=tmp_path)
    assert result.returncode != 0
    assert "Non-existent config key: MODEL.RESNEXT.BLOCKFORM" in result.stderr


@pytest.mark.parametrize("key,value,match", [
    ("MODEL.RESNEXT.BLOCK_FORM", "split", "MODEL.RESNEXT.BLOCK_FORM must be one of grouped"),
    ("MODEL.RESNETS.DEPTH", "34", "MODEL.RESNETS.DEPTH must be one of 26, 50, 101, 152, 200"),
])  # fmt: skip
def test_invalid_backbone_value(tmp_path, key, value, match):
    result = train_net("--config-file", str(TINY), key, value, tmp_path=tmp_path)
    assert result.returncode != 0
    assert match in result.stderr


def test_dataset_that_is_not_registered(tmp_path):
    result = train_net(
        "--config-file", str(TINY), "DATASETS.TRAIN", "('no_such_set',)", tmp_path=tmp_path
    )
    assert result.returncode != 0
    assert "no_such_set" in result.stderr and "registered" in result.stderr
