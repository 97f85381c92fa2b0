"""Issue 26 item 2: the seed-run pool of ``tools/train_net.py --seed-runs N --parallel J``.

Its workers used to outlive a parent killed with SIGKILL (re-parented to init, training on,
starting the next seed, holding the folders' locks), and Ctrl-C stopped nothing (the queued seed
started after the interrupt; an interrupt inside a save was logged as torch's "unexpected pos").

Each test starts the command with every checkpoint write paused for a few seconds (the crash-test
hook of :mod:`resnext_det.io`), waits until both workers are inside their first save, signals,
and checks what is left. Waits are for states (files, processes), with generous deadlines; no
assertion is about time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from resnext_det.io import PAUSE_ENV, TMP_MARK

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"
DEADLINE_S = 300  # spawned workers import torch and detectron2 on a shared 2-core machine

pytestmark = pytest.mark.slow  # two spawned workers each: ~30-60 s per test here


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def start(ds, out: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env[PAUSE_ENV] = "3:model_*.pth"  # every checkpoint write sleeps 3 s before its rename
    cmd = [
        sys.executable, str(TRAIN_NET), "--seed-runs", "3", "--parallel", "2",
        "--config-file", str(TINY),
        "--register", "synthetic_train", str(ds.train_json), str(ds.train_image_root),
        "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "50", "SOLVER.CHECKPOINT_PERIOD", "1",
        "DATASETS.TEST", "()", "CPU_TRAINING.NUM_THREADS", "1",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: a group signal reaches only it
    )  # fmt: skip


def wait_until(condition, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}: "
                        f"{proc.stderr.read()[-3000:]}")  # fmt: skip
        time.sleep(0.1)
    pytest.fail(f"not within {DEADLINE_S} s: {what}")


def worker_pids_inside_a_save(out: Path) -> list[int] | None:
    """The pids of the workers of seeds 0 and 1 once both are inside a checkpoint write."""
    pids = []
    for seed in (0, 1):
        folder = out / f"seed_{seed}"
        if not folder.is_dir() or not list(folder.glob(f".model_*.pth{TMP_MARK}*")):
            return None
        try:
            pids.append(json.loads((folder / ".lock").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None
    return pids


def alive(pid: int) -> bool:
    """Whether any thread of process ``pid`` has yet to exit.

    A killed multithreaded process shows its leader as a zombie ("Z") while its other threads
    are still exiting, and the last of them to exit closes the files, so the folder's flock goes
    only then: the whole thread group must be gone or a zombie, not only the leader.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
                    return True
    except OSError:
        return os.path.exists(f"/proc/{pid}")  # it ended while being read: ask again
    return False


def test_item2_workers_die_with_a_parent_killed_by_sigkill(tmp_path, synthetic):
    from resnext_det.training import lock_output_dir

    out = tmp_path / "runs"
    proc = start(synthetic, out)
    try:
        pids = wait_until(lambda: worker_pids_inside_a_save(out), "both workers save", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_until(lambda: not any(map(alive, pids)), f"the workers {pids} are gone")
    finally:
        with_group_killed(proc)
    assert not (out / "seed_2").exists()  # no worker went on to the queued seed
    for seed in (0, 1):  # no orphan holds a folder: a new run may take it at once
        lock_output_dir(out / f"seed_{seed}").release()


@pytest.mark.parametrize("how", ["sigint-to-the-group", "sigterm-to-the-parent"])
def test_item2_an_interrupt_stops_the_queue_and_the_running_runs_cleanly(tmp_path, synthetic, how):
    out = tmp_path / "runs"
    proc = start(synthetic, out)
    try:
        pids = wait_until(lambda: worker_pids_inside_a_save(out), "both workers save", proc)
        if how == "sigint-to-the-group":
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal
            status = 130
        else:
            os.kill(proc.pid, signal.SIGTERM)  # a scheduler's stop, to the parent only
            status = 143
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        with_group_killed(proc)
    assert proc.returncode == status, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("train_net: interrupted by SIG"), last
    assert "not started: seed 2" in last and "run the same command again" in last, last
    assert "stopped: seed 0" in last and "seed 1" in last, last
    assert not (out / "seed_2").exists()  # the queued seed never started
    assert "unexpected pos" not in err and "Traceback" not in err, err[-3000:]
    wait_until(lambda: not any(map(alive, pids)), f"the workers {pids} are gone")
    for seed in (0, 1):  # each run stopped after a whole checkpoint, which loads
        folder = out / f"seed_{seed}"
        name = (folder / "last_checkpoint").read_text().strip()
        state = torch.load(folder / name, map_location="cpu", weights_only=False)
        assert state["iteration"] >= 0 and "model" in state
        assert not list(folder.glob(f".*{TMP_MARK}*"))  # no save was cut short
        assert not (folder / "model_final.pth").exists()


def with_group_killed(proc: subprocess.Popen) -> None:
    """Leave nothing behind whatever failed: the command's whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
