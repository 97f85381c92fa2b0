"""Training: the trainer, atomic checkpoints, resumable data order, launchers for GPUs and CPUs.

Modules by job: :mod:`.trainer` (the ``DefaultTrainer``), :mod:`.step` (the guarded step),
:mod:`.hooks` (resume state, replica check), :mod:`.state` (random states, fingerprints),
:mod:`.sampler` (data order), :mod:`.checkpoint`, :mod:`.launch`, :mod:`.cli` (what
``tools/train_net.py`` does: parse, set up, train or evaluate).
"""

from __future__ import annotations

from .checkpoint import CheckpointWriteError, TrainingCheckpointer
from .cli import (
    argument_parser,
    configure_input_for_weights,
    evaluate,
    launch_from_args,
    make_deterministic,
    setup,
    train,
)
from .hooks import ReplicaCheckHook, TrainingStateHook
from .launch import LaunchArgumentError, launch, torchrun_env
from .sampler import ResumableSampler
from .state import capture_rng_state, parameter_fingerprint, restore_rng_state
from .step import GuardedTrainer, NonFiniteLossError
from .trainer import Trainer

__all__ = [
    "CheckpointWriteError",
    "GuardedTrainer",
    "LaunchArgumentError",
    "NonFiniteLossError",
    "ReplicaCheckHook",
    "ResumableSampler",
    "Trainer",
    "TrainingCheckpointer",
    "TrainingStateHook",
    "argument_parser",
    "capture_rng_state",
    "configure_input_for_weights",
    "evaluate",
    "launch",
    "launch_from_args",
    "make_deterministic",
    "parameter_fingerprint",
    "restore_rng_state",
    "setup",
    "torchrun_env",
    "train",
]
