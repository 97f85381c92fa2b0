"""Seed runs (issue 14): runs of one config that differ only in SEED, in OUTPUT_DIR/seed_<k>/.

With the tiny config (DETERMINISTIC True, no loader workers) the same seed must give the same
weights, bit for bit, whether it ran first or second in a process, alone, in a worker process
beside another run, or from tools/train_net.py --seed; another seed must give other weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from resnext_det.config import load_config
from resnext_det.errors import ConfigError
from resnext_det.training import OutputDirInUseError, lock_output_dir, train_seed_runs

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"
# One thread in every run (in this process, side by side, from the tool): bf16/channels_last CPU
# kernels (CPU_TRAINING) reduce in an order that depends on the thread count, so "the same seed
# gives the same run" holds at an equal thread count.
SCHEDULE = [
    "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()",
    "CPU_TRAINING.NUM_THREADS", "1",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_thread_here():
    """Runs trained in this process use its thread count, which is the caller's to set (as
    ``resnext-det train`` does from CPU_TRAINING.NUM_THREADS); workers set their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def _register(ds) -> list[str]:
    return ["synthetic_train", str(ds.train_json), str(ds.train_image_root)]


def _cfg(ds, out: Path):
    cfg = load_config(TINY, ["OUTPUT_DIR", str(out), *SCHEDULE])
    cfg.DATASETS.COCO_REGISTER = [_register(ds)]
    cfg.freeze()
    return cfg


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _equal(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def seeds_0_1(synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    finals = train_seed_runs(_cfg(synthetic, out), [0, 1])
    assert finals == [out / "seed_0" / "model_final.pth", out / "seed_1" / "model_final.pth"]
    return out


def test_seed_runs_same_seed_same_run_other_seed_other_run(seeds_0_1, synthetic, tmp_path):
    out = seeds_0_1
    for k in (0, 1):
        config = load_config(out / f"seed_{k}" / "config.yaml")
        seed, folder = config.SEED, config.OUTPUT_DIR
        assert seed == k and folder == str(out / f"seed_{k}")
        log = (out / f"seed_{k}" / "log.txt").read_text()
        assert f"Seed run {k}:" in log and f"Seed run {1 - k}:" not in log  # its own log only
        assert (out / f"seed_{k}" / "last_checkpoint").read_text() == "model_final.pth"
    # seed 1 alone, in another folder: the run seed 1 made after seed 0 in the same process
    (final,) = train_seed_runs(_cfg(synthetic, tmp_path), [1])
    assert _equal(final, out / "seed_1" / "model_final.pth")
    assert not _equal(out / "seed_0" / "model_final.pth", out / "seed_1" / "model_final.pth")


def test_seed_runs_are_resumable_and_a_finished_run_is_skipped(seeds_0_1, synthetic):
    before = (seeds_0_1 / "seed_0" / "model_final.pth").read_bytes()
    train_seed_runs(_cfg(synthetic, seeds_0_1), [0])
    assert (seeds_0_1 / "seed_0" / "model_final.pth").read_bytes() == before
    assert "Starting training from iteration 3" in (seeds_0_1 / "seed_0" / "log.txt").read_text()


def test_a_seed_run_in_this_process_leaves_its_settings_behind(synthetic, tmp_path, monkeypatch):
    """DETERMINISTIC True and the run's seeding hold for the run only: the caller's random
    streams, torch's determinism flags and the environment are as before (a library function)."""
    import random

    import numpy as np

    from resnext_det.training import capture_rng_state

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    before = capture_rng_state()
    cfg = _cfg(synthetic, tmp_path)
    assert cfg.DETERMINISTIC
    train_seed_runs(cfg, [0])
    assert (tmp_path / "seed_0" / "model_final.pth").is_file()
    assert not torch.are_deterministic_algorithms_enabled()
    assert "PYTHONHASHSEED" not in os.environ and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    after = capture_rng_state()
    assert torch.equal(after["torch"], before["torch"])
    assert after["python"] == before["python"]
    assert torch.equal(after["numpy"]["keys"], before["numpy"]["keys"])
    assert after["numpy"]["pos"] == before["numpy"]["pos"]


@pytest.mark.slow  # two spawned workers: ~20 s of imports
def test_seed_runs_side_by_side_give_the_runs_of_one_after_another(seeds_0_1, synthetic, tmp_path):
    """--parallel 2: two worker processes (one thread each) train seeds 1 and 0 at once, the
    training set registered here by code (the demo's way), not through the config."""
    torch.ones(1, requires_grad=True).sum().backward()  # autograd's threads exist: no fork
    synthetic.register("synthetic")
    cfg = _cfg(synthetic, tmp_path)
    cfg.defrost()
    cfg.DATASETS.COCO_REGISTER = []
    cfg.freeze()
    finals = train_seed_runs(cfg, [1, 0], parallel=2)
    assert finals == [
        tmp_path / "seed_1" / "model_final.pth",
        tmp_path / "seed_0" / "model_final.pth",
    ]
    for k in (0, 1):
        assert _equal(
            tmp_path / f"seed_{k}" / "model_final.pth", seeds_0_1 / f"seed_{k}" / "model_final.pth"
        )
    pids = {(tmp_path / f"seed_{k}" / ".lock").read_text() for k in (0, 1)}
    assert len(pids) == 2 and str(os.getpid()) not in "".join(pids)  # two other processes


def test_train_net_seed_runs_one_seed_into_its_folder(seeds_0_1, synthetic, tmp_path):
    """A scheduler's fan-out: tools/train_net.py --seed 1 is seed_1 of --seed-runs."""
    cmd = [sys.executable, str(TRAIN_NET), "--seed", "1", "--config-file", str(TINY),
           "--register", *_register(synthetic), "OUTPUT_DIR", str(tmp_path), *SCHEDULE]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed_1"]
    assert _equal(tmp_path / "seed_1" / "model_final.pth", seeds_0_1 / "seed_1" / "model_final.pth")


def test_seed_runs_refuse_bad_seeds_and_a_seed_another_run_holds(synthetic, tmp_path):
    cfg = _cfg(synthetic, tmp_path)
    for seeds in ([], [-1], [0, 0], [1.5]):
        with pytest.raises(ConfigError, match=r"seeds must be distinct non-negative integers"):
            train_seed_runs(cfg, seeds)
    with pytest.raises(ConfigError, match=r"parallel must be a positive integer; got 0"):
        train_seed_runs(cfg, [0], parallel=0)
    # seed 2 is being trained by someone else (here: this process holds its folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom resnext_det.training import lock_output_dir\n"
         f"lock_output_dir({str(tmp_path / 'seed_2')!r}); print('held', flush=True)\n"
         "time.sleep(300)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUseError, match=rf"seed_2 is in use by .*pid {holder.pid}"):
            train_seed_runs(cfg, [2])
    finally:
        holder.kill()
        holder.wait()
    lock_output_dir(tmp_path / "seed_2").release()  # free again after the kill
