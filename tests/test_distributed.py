"""Multi-process training on the CPU: torchrun (gloo) and --num-gpus without CUDA.

Both processes must step in sync: after every checkpoint iteration each rank logs a SHA-1 of its
parameters (resnext_det.training.ReplicaCheckHook); the test compares the two ranks' logs with each
other and with the fingerprint of the saved model, computed here from the file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from resnext_det.training import launch, parameter_fingerprint, torchrun_env

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"
FINGERPRINT = re.compile(r"Parameter fingerprint after iteration (\d+): ([0-9a-f]{40}) \(rank (\d)")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def _train_args(ds, out: Path, max_iter: int) -> list[str]:
    return [
        str(TRAIN_NET), "--config-file", str(TINY),
        "--register", "synthetic_train", str(ds.train_json), str(ds.train_image_root),
        "OUTPUT_DIR", str(out), "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "2",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        env.pop(var, None)
    return env


def _fingerprints(out: Path) -> dict[tuple[int, int], str]:
    """(iteration, rank) -> fingerprint, from every rank's log file."""
    found = {}
    for log in [out / "log.txt", *sorted(out.glob("log.txt.rank*"))]:
        for it, fp, rank in FINGERPRINT.findall(log.read_text()):
            found[int(it), int(rank)] = fp
    return found


def _saved_fingerprint(path: Path) -> str:
    from conftest import tiny_cfg
    from detectron2.modeling import build_model

    from resnext_det.training.cli import setup  # noqa: F401  (cfg keys)

    cfg = tiny_cfg()
    cfg.merge_from_file(str(TINY))
    model = build_model(cfg)
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    return parameter_fingerprint(model)


def _check_in_sync(out: Path, iterations: tuple[int, int], world: int = 2) -> None:
    prints = _fingerprints(out)
    first, last = iterations
    for it in iterations:
        per_rank = {prints.get((it, r)) for r in range(world)}
        assert len(per_rank) == 1 and None not in per_rank, (it, prints)
    assert prints[first, 0] != prints[last, 0], "the parameters did not change between checkpoints"
    assert prints[last, 0] == _saved_fingerprint(out / "model_final.pth")
    assert f"World size: {world}" in (out / "log.txt").read_text()


def test_torchrun_two_cpu_processes_step_in_sync(tmp_path, synthetic):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, *_train_args(synthetic, out, max_iter=4)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_in_sync(out, (1, 3))


@pytest.mark.slow
def test_num_gpus_without_cuda_spawns_gloo_processes(tmp_path, synthetic):
    """detectron2 0.6's launch() asserts CUDA; ours spawns gloo CPU workers instead."""
    out = tmp_path / "out"
    args = _train_args(synthetic, out, max_iter=4)
    args[1:1] = ["--num-gpus", "2", "--dist-url", "auto"]
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_in_sync(out, (1, 3))


def test_torchrun_env_is_read_and_checked(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert torchrun_env() == {"rank": 3, "world_size": 4, "local_rank": 1, "local_world_size": 2}
    monkeypatch.setenv("RANK", "three")
    with pytest.raises(ValueError, match=r"must be integers .* got \{'RANK': 'three'"):
        torchrun_env()


def test_launch_checks_its_arguments(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert launch(lambda x: x + 1, 1, args=(1,)) == 2  # one process: a plain call
    with pytest.raises(ValueError, match="--num-gpus must be a positive integer; got 0"):
        launch(print, 0)
    with pytest.raises(ValueError, match=r"--machine-rank must be in 0..1; got 2"):
        launch(print, 1, num_machines=2, machine_rank=2)
