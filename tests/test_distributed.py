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

from resnext_det.training import (
    LaunchArgumentError,
    launch,
    parameter_fingerprint,
    torchrun_env,
)

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

    from resnext_det.training.session import setup  # noqa: F401  (cfg keys)

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
    # The library names its own arguments; train_net.py says them as its flags.
    with pytest.raises(LaunchArgumentError, match="num_gpus_per_machine must be a positive"):
        launch(print, 0)
    with pytest.raises(LaunchArgumentError, match=r"machine_rank must be in 0..1; got 2") as e:
        launch(print, 1, num_machines=2, machine_rank=2)
    assert e.value.argument == "machine_rank"
    for flags, match in (
        (["--num-gpus", "0"], "--num-gpus must be a positive integer; got 0"),
        (["--num-machines", "2", "--machine-rank", "2"], r"--machine-rank must be in 0..1; got 2"),
    ):
        proc = subprocess.run(
            [sys.executable, str(TRAIN_NET), *flags, "--config-file", str(TINY)],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert re.search(f"error: {match}", proc.stderr), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# The cross-rank guards, in two real gloo processes (no detector: a toy model is enough to show
# what each rank sees).


class _Toy(torch.nn.Module):
    """Two loss terms from one weight; ``fault(rank, iteration)`` can spoil one rank's step."""

    def __init__(self, fault):
        super().__init__()
        torch.manual_seed(0)  # equal replicas
        self.weight = torch.nn.Parameter(torch.randn(4))
        self.fault = fault
        self.iteration = 0

    def forward(self, data):
        from detectron2.utils import comm

        losses = {"loss_a": (self.weight**2).sum(), "loss_b": self.weight.abs().sum()}
        return self.fault(comm.get_rank(), self.iteration, losses)


def _nan_on_rank1_at_1(rank, iteration, losses):
    if rank == 1 and iteration == 1:
        losses["loss_b"] = losses["loss_b"] * float("nan")
    return losses


def _rpn_error_on_rank0_at_0(rank, iteration, losses):
    if rank == 0 and iteration == 0:
        raise FloatingPointError(
            "Predicted boxes or scores contain Inf/NaN. Training has diverged."
        )
    return losses


def _guard_case(fault) -> dict:
    """Run 3 steps of GuardedTrainer on a DDP toy; where and how the guard stopped them."""
    import itertools

    from detectron2.utils.events import EventStorage
    from torch.nn.parallel import DistributedDataParallel

    from resnext_det.training import GuardedTrainer, NonFiniteLossError

    toy = _Toy(fault)
    model = DistributedDataParallel(toy)
    trainer = GuardedTrainer(model, itertools.repeat([{}]), torch.optim.SGD(toy.parameters(), 0.1))
    found = {"stopped_at": None}
    with EventStorage(0):
        for it in range(3):
            toy.iteration = trainer.iter = it
            before = parameter_fingerprint(toy)
            try:
                trainer.run_step()
            except NonFiniteLossError as exc:
                found.update(stopped_at=it, message=str(exc))
                found["unchanged"] = parameter_fingerprint(toy) == before
                break
    found["fingerprint"] = parameter_fingerprint(toy)
    return found


def _replica_case(perturb: bool) -> dict:
    from types import SimpleNamespace

    from detectron2.utils import comm

    from resnext_det.training import ReplicaCheckHook

    toy = _Toy(lambda r, i, losses: losses)
    if perturb and comm.get_rank() == 1:
        with torch.no_grad():
            w = toy.weight[2]
            toy.weight[2] = torch.nextafter(w, w + 1)  # one ulp, on one rank
    hook = ReplicaCheckHook(checkpoint_period=2)
    hook.trainer = SimpleNamespace(iter=1, max_iter=10, model=toy)
    try:
        hook.after_step()
    except RuntimeError as exc:
        return {"error": str(exc)}
    return {"error": None}


def _gloo_worker(out_dir: str) -> None:
    import json

    from detectron2.utils import comm

    results = {
        "nan_on_rank1": _guard_case(_nan_on_rank1_at_1),
        "rpn_error_on_rank0": _guard_case(_rpn_error_on_rank0_at_0),
        "replicas_equal": _replica_case(perturb=False),
        "replicas_differ": _replica_case(perturb=True),
    }
    Path(out_dir, f"rank{comm.get_rank()}.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def gloo_guards(tmp_path_factory):
    """Every rank's view of the guard cases, from one 2-process gloo launch (a minute's timeout
    on collectives, so a rank left waiting fails the test instead of hanging it)."""
    import json
    from datetime import timedelta

    if torch.cuda.is_available():
        pytest.skip("launch() uses detectron2's NCCL launcher when CUDA is present")
    out = tmp_path_factory.mktemp("gloo")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            mp.delenv(var, raising=False)
        try:
            launch(
                _gloo_worker, 2, dist_url="auto", args=(str(out),), timeout=timedelta(seconds=60)
            )
        except torch.multiprocessing.ProcessExitedException as exc:
            # Known flake, about one launch in five on the 2-core machine: a worker aborts in
            # gloo's teardown ("terminate called without an active exception") after the cases
            # ran. Not understood yet (docs/reliability.md); one retry, and only for a signal.
            if exc.signal_name is None:
                raise
            launch(
                _gloo_worker, 2, dist_url="auto", args=(str(out),), timeout=timedelta(seconds=60)
            )
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_non_finite_loss_on_one_rank_stops_every_rank(gloo_guards):
    """Rank 1's NaN stops rank 0 too, at the same iteration, before either rank's update; each
    rank's message names the rank and the term."""
    for rank, seen in enumerate(gloo_guards):
        case = seen["nan_on_rank1"]
        assert case["stopped_at"] == 1, (rank, case)
        assert re.search(
            r"not finite at iteration 1 \(rank 1: loss_a=[0-9.]+, loss_b=nan\)", case["message"]
        )
        assert "rank 0:" not in case["message"]
        assert case["unchanged"], "the weights were updated at the failing iteration"
        case = seen["rpn_error_on_rank0"]
        assert case["stopped_at"] == 0
        assert "rank 0: FloatingPointError: Predicted boxes" in case["message"]
    # The replicas are still equal (one good update, then the stop on both).
    assert (
        gloo_guards[0]["nan_on_rank1"]["fingerprint"]
        == gloo_guards[1]["nan_on_rank1"]["fingerprint"]
    )


def test_replica_divergence_is_found_on_every_rank(gloo_guards):
    for seen in gloo_guards:
        assert seen["replicas_equal"]["error"] is None
        error = seen["replicas_differ"]["error"]
        assert error and error.startswith("Replicas diverged after iteration 1"), error
        prints = re.findall(r"\d: '([0-9a-f]{40})'", error)
        assert len(prints) == 2 and prints[0] != prints[1], error
