"""Kill-and-resume: real training processes killed with SIGKILL, then run again with --resume.

Whatever the kill point, ``last_checkpoint`` must name a whole, loadable checkpoint (or not exist
yet), and the resumed run must end with the weights of an uninterrupted run. Runs are seeded,
single-process, without loader workers and with deterministic algorithms (the tiny test config),
so the comparison is tight: the tolerance is 1e-6 (absolute) and the runs measured so far agree
bit for bit.

Kill points: inside the write of a checkpoint (between the fsync of its temporary file and the
rename; ``RESNEXT_DET_TEST_PAUSE_BEFORE_RENAME`` holds the process there), inside the write of
``last_checkpoint``, inside the first save (nothing to resume from yet), inside the final save,
between steps, and (slow) a sweep of random kill times.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from resnext_det.io import PAUSE_ENV

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"
MAX_ITER = 6
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


def _command(ds, out: Path, *, resume: bool, period: int = 2) -> list[str]:
    return [
        sys.executable, str(TRAIN_NET), *(["--resume"] if resume else []),
        "--config-file", str(TINY),
        "--register", "synthetic_train", str(ds.train_json), str(ds.train_image_root),
        "OUTPUT_DIR", str(out), "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(period),
    ]  # fmt: skip


def _start(cmd: list[str], pause: str | None = None) -> subprocess.Popen:
    # One thread: on a busy 2-core machine two OpenMP threads per process are ~10x slower.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _finish(cmd: list[str]) -> None:
    proc = _start(cmd)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended before the kill point:\n{proc.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the kill point was not reached in time")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _temporaries(out: Path, name: str) -> list[str]:
    return [p for p in os.listdir(out) if p.startswith(f".{name}.tmp-")] if out.is_dir() else []


def _pointer(out: Path) -> str | None:
    try:
        return (out / "last_checkpoint").read_text()
    except FileNotFoundError:
        return None


def assert_pointer_is_whole(out: Path) -> str | None:
    """``last_checkpoint`` is absent, or names a file that loads completely."""
    name = _pointer(out)
    if name is None:
        return None
    ckpt = torch.load(out / name, map_location="cpu", weights_only=True)
    assert {"model", "trainer", "iteration"} <= set(ckpt), sorted(ckpt)
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]
    return name


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert diff <= TOLERANCE, f"resumed run ends {diff:.3g} away from the uninterrupted one"
    return diff


@pytest.fixture(scope="module")
def reference(synthetic, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights."""
    out = tmp_path_factory.mktemp("reference")
    _finish(_command(synthetic, out, resume=False))
    return final_weights(out)


def _kill_and_resume(synthetic, out: Path, pause: str | None, ready) -> str | None:
    _kill_when(_start(_command(synthetic, out, resume=False), pause=pause), ready)
    pointer = assert_pointer_is_whole(out)
    _finish(_command(synthetic, out, resume=True))
    assert not [p for p in os.listdir(out) if ".tmp-" in p]  # leftovers were cleaned up
    return pointer


def test_kill_inside_a_checkpoint_write_then_resume(tmp_path, synthetic, reference):
    out = tmp_path / "out"
    pointer = _kill_and_resume(
        synthetic, out, "60:model_0000003.pth", lambda: _temporaries(out, "model_0000003.pth")
    )
    assert pointer == "model_0000001.pth"  # the one before the interrupted write
    assert_same_weights(final_weights(out), reference)
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 2" in log
    assert "left by a save that was interrupted" in log


@pytest.mark.slow
@pytest.mark.parametrize(
    "pause,point,expected_pointer",
    [
        # the very first save: nothing to resume from, the run starts over
        ("60:model_0000001.pth", "model_0000001.pth", None),
        # last_checkpoint's own write, after model_0000003.pth is whole
        ("2:last_checkpoint", "last_checkpoint@3", "model_0000001.pth"),
        # the final save (model_0000005.pth is already named)
        ("60:model_final.pth", "model_final.pth", "model_0000005.pth"),
        # between steps, just after a checkpoint
        (None, "after@3", "model_0000003.pth"),
    ],
)
def test_kill_points(tmp_path, synthetic, reference, pause, point, expected_pointer):
    out = tmp_path / "out"
    if point == "last_checkpoint@3":

        def ready():
            return (out / "model_0000003.pth").exists() and _temporaries(out, "last_checkpoint")
    elif point == "after@3":

        def ready():
            return _pointer(out) == "model_0000003.pth"
    else:

        def ready():
            return _temporaries(out, point)

    assert _kill_and_resume(synthetic, out, pause, ready) == expected_pointer
    assert_same_weights(final_weights(out), reference)


@pytest.mark.slow
def test_random_kill_sweep(tmp_path, synthetic, reference):
    """Kill at random times (saves slowed to widen their window) until a run completes.

    The kill time is drawn from [0, span) after the run starts training; span doubles whenever a
    run made no progress, so the sweep ends on any machine speed.
    """
    out = tmp_path / "out"
    rng = random.Random(1234)
    kills, in_write, pointers, span = 0, 0, [], 1.0
    for attempt in range(40):
        proc = _start(_command(synthetic, out, resume=attempt > 0, period=1), pause="0.3")
        log = out / "log.txt"
        started = log.read_text().count("Starting training") if log.exists() else 0
        while proc.poll() is None and (
            not log.exists() or log.read_text().count("Starting training") == started
        ):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, span))
        if proc.poll() is not None:
            _, err = proc.communicate()
            assert proc.returncode == 0, err[-3000:]
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        in_write += any(".tmp-" in p for p in os.listdir(out))  # killed inside a write
        pointers.append(assert_pointer_is_whole(out))
        if len(pointers) > 1 and pointers[-1] == pointers[-2]:
            span *= 2
    else:
        pytest.fail(f"no run finished after {kills} kills")
    print(f"random sweep: {kills} kills ({in_write} inside a write); last_checkpoint: {pointers}")
    assert kills >= 3
    assert_same_weights(final_weights(out), reference)
