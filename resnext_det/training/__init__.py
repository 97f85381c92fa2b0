"""Training: the trainer, atomic checkpoints, resumable data order, launchers for GPUs and CPUs.

Modules by job: :mod:`.trainer` (the ``DefaultTrainer``), :mod:`.step` (the guarded step),
:mod:`.hooks` (resume state, replica check), :mod:`.state` (random states, fingerprints),
:mod:`.sampler` (data order), :mod:`.checkpoint`, :mod:`.lock` (one run per OUTPUT_DIR),
:mod:`.seeds` (runs that differ in SEED), :mod:`.launch`, :mod:`.session` (what
``resnext-det train`` does in each process: set up, train or evaluate).
"""

from __future__ import annotations

from .checkpoint import CheckpointWriteError, TrainingCheckpointer
from .hooks import ReplicaCheckHook, TrainingStateHook
from .launch import LaunchArgumentError, launch, torchrun_env
from .lock import OutputDirInUseError, OutputDirLock, lock_output_dir
from .sampler import ResumableSampler
from .seeds import seed_run_config, seed_run_dir, train_runs, train_seed_run, train_seed_runs
from .session import (
    build_config,
    configure_input_for_weights,
    evaluate,
    setup,
    train,
)
from .state import (
    capture_rng_state,
    make_deterministic,
    parameter_fingerprint,
    restore_rng_state,
)
from .step import GuardedTrainer, NonFiniteLossError
from .trainer import Trainer

__all__ = [
    "CheckpointWriteError",
    "GuardedTrainer",
    "LaunchArgumentError",
    "NonFiniteLossError",
    "OutputDirInUseError",
    "OutputDirLock",
    "ReplicaCheckHook",
    "ResumableSampler",
    "Trainer",
    "TrainingCheckpointer",
    "TrainingStateHook",
    "build_config",
    "capture_rng_state",
    "configure_input_for_weights",
    "evaluate",
    "launch",
    "lock_output_dir",
    "make_deterministic",
    "parameter_fingerprint",
    "restore_rng_state",
    "seed_run_config",
    "seed_run_dir",
    "setup",
    "torchrun_env",
    "train",
    "train_seed_run",
    "train_runs",
    "train_seed_runs",
]
