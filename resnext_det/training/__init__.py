"""Training: the trainer, atomic checkpoints, resumable data order, launchers for GPUs and CPUs.

``tools/train_net.py`` is ``setup`` + ``train``/``evaluate`` + ``launch`` from here.
"""

from __future__ import annotations

from .checkpoint import CheckpointWriteError, TrainingCheckpointer, atomic_write
from .cli import (
    argument_parser,
    configure_input_for_weights,
    evaluate,
    make_deterministic,
    register_datasets,
    setup,
    train,
)
from .launch import launch, torchrun_env
from .sampler import ResumableSampler
from .trainer import (
    GuardedTrainer,
    NonFiniteLossError,
    ReplicaCheckHook,
    Trainer,
    TrainingStateHook,
    capture_rng_state,
    parameter_fingerprint,
    restore_rng_state,
)

__all__ = [
    "CheckpointWriteError",
    "GuardedTrainer",
    "NonFiniteLossError",
    "ReplicaCheckHook",
    "ResumableSampler",
    "Trainer",
    "TrainingCheckpointer",
    "TrainingStateHook",
    "argument_parser",
    "atomic_write",
    "capture_rng_state",
    "configure_input_for_weights",
    "evaluate",
    "launch",
    "make_deterministic",
    "parameter_fingerprint",
    "register_datasets",
    "restore_rng_state",
    "setup",
    "torchrun_env",
    "train",
]
