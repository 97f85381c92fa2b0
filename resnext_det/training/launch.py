"""Start single-process, multi-process and multi-machine training, on GPUs or CPUs.

Three ways in, one result (a process group and detectron2's ``comm._LOCAL_PROCESS_GROUP``):

* ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, as SLURM
  wrappers and Kubernetes operators do): each process is already started; :func:`launch`
  initialises the process group from the environment (``env://``), NCCL on GPUs and gloo on CPUs.
* ``--num-gpus N`` with CUDA: detectron2's own ``launch`` (spawns N NCCL workers per machine).
* ``--num-gpus N`` without CUDA: N gloo workers on the CPU. detectron2 0.6's ``launch`` asserts
  CUDA, so this path spawns them itself, doing what its ``_distributed_worker`` does.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "LaunchArgumentError", "launch", "torchrun_env"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class LaunchArgumentError(ValueError):
    """An argument of :func:`launch` that is not allowed.

    ``argument`` is the parameter's name and ``problem`` the rest of the message, so that a
    command-line tool can say it with its own flag (``--num-gpus`` for ``num_gpus_per_machine``).
    """

    def __init__(self, argument: str, problem: str):
        super().__init__(f"{argument} {problem}")
        self.argument = argument
        self.problem = problem


def torchrun_env() -> dict[str, int] | None:
    """``{"rank", "world_size", "local_rank", "local_world_size"}`` when started by torchrun.

    Returns None when any of ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` is unset (a plain
    ``python tools/train_net.py`` run).
    """
    if not all(v in os.environ for v in _TORCHRUN_VARS):
        return None
    try:
        env = {v.lower(): int(os.environ[v]) for v in _TORCHRUN_VARS}
        env["local_world_size"] = int(os.environ.get("LOCAL_WORLD_SIZE", env["world_size"]))
    except ValueError as exc:
        given = {v: os.environ.get(v) for v in (*_TORCHRUN_VARS, "LOCAL_WORLD_SIZE")}
        raise ValueError(
            "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (torchrun sets "
            f"them); got {given}"
        ) from exc
    return env


def _backend(backend: str) -> str:
    if backend != "auto":
        return backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def _setup_local_process_group(machine_id: str) -> None:
    """Create one process group per machine and keep ours in ``comm._LOCAL_PROCESS_GROUP``.

    detectron2's ``comm.get_local_rank()`` (used to pick a GPU and by ``create_ddp_model``)
    asserts this group exists; only its own ``launch`` creates it. Machines are told apart by
    ``machine_id`` (gathered from every rank), so the groups are right even when a launcher
    numbers ranks across machines in an unexpected order. Every rank creates every group, in the
    same order, as ``dist.new_group`` requires.
    """
    ids = [None] * dist.get_world_size()
    dist.all_gather_object(ids, machine_id)
    machines: dict[str, list[int]] = {}
    for rank, mid in enumerate(ids):
        machines.setdefault(mid, []).append(rank)
    comm._LOCAL_PROCESS_GROUP = None
    for mid in sorted(machines):
        group = dist.new_group(machines[mid])
        if mid == machine_id:
            comm._LOCAL_PROCESS_GROUP = group


def _init_from_torchrun(env: dict[str, int], backend: str, timeout: timedelta) -> None:
    backend = _backend(backend)
    if backend == "nccl":  # bind the GPU first, so that NCCL's communicators use it
        torch.cuda.set_device(env["local_rank"])
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    # torchrun sets GROUP_RANK (the node's rank); other launchers may not: fall back to the host.
    machine = os.environ.get("GROUP_RANK") or socket.gethostname()
    _setup_local_process_group(str(machine))
    comm.synchronize()


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    procs_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    # detectron2.engine.launch._distributed_worker without its CUDA assertion, on gloo.
    rank = machine_rank * procs_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group URL: {dist_url}")
        raise
    _setup_local_process_group(str(machine_rank))
    comm.synchronize()
    try:
        main_func(*args)
        # Wait for every rank before tearing the group down: a rank that finishes first would
        # otherwise close its gloo connections under a straggler's last collective (seen once
        # as "terminate called without an active exception" in the 2-process guard test).
        comm.synchronize()
    finally:
        # Free what still holds the groups (a DDP model's reducer in a reference cycle) while
        # they are intact, so that destroying them joins gloo's threads now rather than in the
        # interpreter's shutdown, the suspected source of that abort.
        gc.collect()
        dist.destroy_process_group()


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: str = "auto",
) -> Any:
    """Run ``main_func(*args)`` in every training process; same arguments as detectron2's.

    Args:
        main_func: the per-process entry point.
        num_gpus_per_machine: processes per machine, ignored under torchrun.
        num_machines: machines, ignored under torchrun.
        machine_rank: this machine's rank, ignored under torchrun.
        dist_url: ``tcp://host:port`` of machine 0, or ``"auto"`` (or None) for a free local
            port; ignored under torchrun, which uses ``MASTER_ADDR``/``MASTER_PORT``.
        args: arguments for ``main_func``.
        timeout: collective-operation timeout.
        backend: ``"auto"`` (NCCL when CUDA is available, else gloo), ``"nccl"`` or ``"gloo"``;
            used under torchrun. With CUDA present, a CPU-only torchrun job needs ``"gloo"``
            (or ``CUDA_VISIBLE_DEVICES=``).

    Returns:
        what ``main_func`` returns in a single process or under torchrun; None when workers
        were spawned.

    Raises:
        LaunchArgumentError: an argument out of range (named as the parameter, for the caller
            to translate into its own terms).
    """
    env = torchrun_env()
    if env is not None:
        if env["world_size"] == 1:
            return main_func(*args)
        _init_from_torchrun(env, backend, timeout)
        try:
            return main_func(*args)
        finally:
            dist.destroy_process_group()

    for name, value in (
        ("num_gpus_per_machine", num_gpus_per_machine),
        ("num_machines", num_machines),
    ):
        if not isinstance(value, int) or value < 1:
            raise LaunchArgumentError(name, f"must be a positive integer; got {value!r}")
    if not 0 <= machine_rank < num_machines:
        raise LaunchArgumentError(
            "machine_rank", f"must be in 0..{num_machines - 1}; got {machine_rank}"
        )
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        return main_func(*args)
    if torch.cuda.is_available():
        from detectron2.engine import launch as d2_launch

        return d2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines,
            machine_rank,
            dist_url,
            args=args,
            timeout=timeout,
        )

    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise LaunchArgumentError(
                "dist_url",
                f"'auto' works on one machine only ({num_machines} machines); give "
                "tcp://HOST:PORT of machine 0",
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            dist_url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    logger.info(f"No CUDA: starting {num_gpus_per_machine} gloo CPU processes on this machine")
    torch.multiprocessing.spawn(
        _cpu_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
    )
    return None
