"""Random-number state, determinism and parameter fingerprints: what makes runs repeatable.

The random state is saved in checkpoints so that a resumed run draws what the interrupted one
would have (augmentations use numpy's and Python's global RNGs, proposal sampling uses torch's).
It is stored as plain lists and tensors so that ``torch.load(weights_only=True)`` reads it back.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from detectron2.utils.env import seed_all_rng

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "preserved_rng",
    "parameter_fingerprint",
    "make_deterministic",
    "seeded_run",
]


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, numpy, torch (and CUDA) random states, in a torch.save-safe form."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation) without changing the random state training continues from."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def parameter_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter's bytes, in name order: equal iff the parameters are bit-equal."""
    model = getattr(model, "module", model)  # DistributedDataParallel: the same names as saved
    h = hashlib.sha1()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        # reshape(-1): a flat, stride-1 view whatever the memory format (a channels_last 1x1
        # conv weight counts as contiguous yet has a last stride of C).
        h.update(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_deterministic() -> None:
    """Ask torch for deterministic kernels (``DETERMINISTIC True``); ops without one warn."""
    # cuBLAS needs this before its first use to be deterministic (torch's reproducibility notes).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


# What seed_all_rng and make_deterministic write to the environment.
_RUN_ENV = ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")


@contextmanager
def seeded_run(seed: int, deterministic: bool) -> Iterator[None]:
    """A training run's process settings for the block only: every random generator seeded with
    ``seed`` (detectron2's ``seed_all_rng``) and, with ``deterministic``, torch's deterministic
    kernels (:func:`make_deterministic`). On leaving, the caller's random states, determinism
    flags and environment are back as they were: what a library function that trains a run
    (:func:`resnext_det.training.train_seed_runs`) owes its caller's process. A command's own
    process sets them for good instead (``tools/train_net.py``'s ``setup``)."""
    env = {name: os.environ.get(name) for name in _RUN_ENV}
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    with preserved_rng():
        try:
            seed_all_rng(seed)
            if deterministic:
                make_deterministic()
            yield
        finally:
            torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[2:]
            for name, value in env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
