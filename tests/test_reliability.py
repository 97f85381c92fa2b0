"""Bad configuration reaching tools/train_net.py ends in a message naming the culprit (the rest of
docs/reliability.md's table is tested next to the code it concerns)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from resnext_det.io import PAUSE_ENV

TINY = REPO / "configs" / "tests" / "faster_rcnn_tiny.yaml"
TRAIN_NET = REPO / "tools" / "train_net.py"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from resnext_det.data import make_synthetic_coco

    return make_synthetic_coco(
        tmp_path_factory.mktemp("synthetic"), num_train=8, num_val=4, image_size=64, seed=0
    )


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
def test_invalid_backbone_value(tmp_path, synthetic, key, value, match):
    register = ["--register", "synthetic_train", str(synthetic.train_json),
                str(synthetic.train_image_root), "DATASETS.TEST", "()"]  # fmt: skip
    result = train_net("--config-file", str(TINY), *register, key, value, tmp_path=tmp_path)
    assert result.returncode != 0
    assert match in result.stderr


def test_dataset_that_is_not_registered(tmp_path):
    result = train_net(
        "--config-file", str(TINY), "DATASETS.TRAIN", "('no_such_set',)", tmp_path=tmp_path
    )
    assert result.returncode != 0
    assert "no_such_set" in result.stderr and "registered" in result.stderr


# ---------------------------------------------------------------------------------------------
# Issue 15 item 3: one OUTPUT_DIR holds one live run.


def _tiny_run(ds, out: Path, *extra: str, pause: str | None = None, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    cmd = [
        sys.executable, str(TRAIN_NET), *extra, "--config-file", str(TINY),
        "--register", "synthetic_train", str(ds.train_json), str(ds.train_image_root),
        "--register", "synthetic_val", str(ds.val_json), str(ds.val_image_root),
        "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATASETS.TEST", "()",
    ]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw
    )


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_output_dir_lock_refuses_a_second_holder_and_goes_with_a_killed_one(tmp_path):
    """The lock itself: held by another process, it is refused with that process's pid and host;
    after a SIGKILL of the holder it is free (the OS dropped it, the stale file does not matter)."""
    from resnext_det.training.lock import OutputDirInUseError, OutputDirLock

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from resnext_det.training.lock import OutputDirLock\n"
         f"OutputDirLock({str(out)!r}); print('held', flush=True); time.sleep(300)"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirInUseError) as e:
            OutputDirLock(out)
        msg = str(e.value)
        assert f"OUTPUT_DIR {out} is in use by another run: pid {holder.pid} on " in msg
        assert socket.gethostname() in msg and str(out / ".lock") in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").is_file()  # left behind, and harmless
    lock = OutputDirLock(out)
    assert f'"pid": {os.getpid()}' in (out / ".lock").read_text()
    lock.release()
    OutputDirLock(out).release()  # released: free again


@pytest.mark.slow
def test_two_runs_in_one_output_dir_second_fails_naming_the_holder(tmp_path, synthetic):
    """A second training, --resume or --eval-only into a live run's folder fails at once, naming
    the folder and the holder's pid and host, and touches nothing (not even the temporary of the
    save the first run is inside); after a SIGKILL of the holder a new run starts."""
    out = tmp_path / "out"
    first = _tiny_run(synthetic, out, pause="120:model_0000001.pth")
    deadline = time.monotonic() + 240
    log = out / "log.txt"
    while not (log.is_file() and "pausing before renaming" in log.read_text()):
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the first run did not reach its first save"
        time.sleep(0.1)
    try:
        before = _snapshot(out)
        assert ".lock" in before and f'"pid": {first.pid}' in before[".lock"].decode()
        for extra in ([], ["--resume"], ["--eval-only"]):
            second = _tiny_run(synthetic, out, *extra)
            _, err = second.communicate(timeout=240)
            assert second.returncode != 0, (extra, err[-3000:])
            assert f"OUTPUT_DIR {out} is in use by another run: pid {first.pid} on " in err, err
            assert socket.gethostname() in err
            assert first.poll() is None, "the first run was disturbed"
            assert _snapshot(out) == before, extra  # the temporary, log, config: all as they were
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    third = _tiny_run(synthetic, out, "--resume")
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-3000:]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
