"""Training hooks: the state a resumed run needs, and the check that DDP replicas agree."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from detectron2.engine import hooks
from detectron2.utils import comm

from .state import capture_rng_state, parameter_fingerprint, restore_rng_state
from .step import NonFiniteLossError

__all__ = ["TrainingStateHook", "ReplicaCheckHook", "is_checkpoint_iter"]

logger = logging.getLogger(__name__)


def is_checkpoint_iter(iteration: int, period: int, max_iter: int) -> bool:
    # The iterations at which detectron2's PeriodicCheckpointer saves.
    return (iteration + 1) % period == 0 or iteration >= max_iter - 1


class TrainingStateHook(hooks.HookBase):
    """Keeps, for the checkpoint, what a resumed run needs beyond weights and optimizer.

    At every checkpoint iteration (before the checkpointer runs) it gathers every rank's random
    state; its ``state_dict`` (saved inside the trainer's) also holds the sampler seed and the
    number of images drawn. On load it keeps them for :meth:`Trainer.resume_or_load`, and
    restores this rank's random state just before training resumes.
    """

    def __init__(self, checkpoint_period: int, sampler_seed: int, ims_per_batch: int):
        self.checkpoint_period = checkpoint_period
        self.sampler_seed = sampler_seed
        self.ims_per_batch = ims_per_batch
        self._state: dict[str, Any] | None = None
        self.loaded: dict[str, Any] | None = None

    def after_step(self) -> None:
        it = self.trainer.iter
        if is_checkpoint_iter(it, self.checkpoint_period, self.trainer.max_iter):
            # Loss checks catch most divergence, but a finite loss can still produce an infinite
            # update; never let such weights replace the last good checkpoint. (DDP replicas are
            # equal, so every rank raises.)
            bad = [n for n, p in self.trainer.model.named_parameters() if not p.isfinite().all()]
            if bad:
                raise NonFiniteLossError(
                    f"Parameters are not finite after iteration {it} ({len(bad)} tensors, e.g. "
                    f"{', '.join(bad[:3])}); the checkpoint of this iteration was not written."
                )
            self._state = self._capture(it, comm.all_gather(capture_rng_state()))

    def _capture(self, iteration: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "sampler_seed": self.sampler_seed,
            "images_seen": (iteration + 1) * self.ims_per_batch,
            "world_size": len(rng),
            "rng": rng,
        }

    def state_dict(self) -> dict[str, Any]:
        if self._state is not None and self._state["iteration"] == self.trainer.iter:
            return self._state
        if self.loaded and self.loaded.get("iteration") == self.trainer.iter:
            return self.loaded  # re-saving a loaded checkpoint (see Trainer.train)
        # A save outside the schedule: only this rank's state can be had without a collective.
        if comm.get_world_size() == 1:
            return self._capture(self.trainer.iter, [capture_rng_state()])
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.loaded = dict(state_dict)

    def before_train(self) -> None:
        if not self.loaded or "rng" not in self.loaded:
            return
        rng = self.loaded["rng"]
        if len(rng) != comm.get_world_size():
            logger.warning(
                f"The checkpoint was written by {len(rng)} processes and this run has "
                f"{comm.get_world_size()}: random states are not restored, so augmentations and "
                "proposal sampling will differ from an uninterrupted run."
            )
            return
        restore_rng_state(rng[comm.get_rank()])


class ReplicaCheckHook(hooks.HookBase):
    """At every checkpoint iteration, checks that all ranks hold bit-identical parameters.

    DDP keeps replicas equal only if every rank applies the same update; a rank that diverged
    (a non-deterministic op, a buffer broadcast off, a bug in a custom step) would otherwise go
    unnoticed until the numbers were wrong. Logs the fingerprint on every rank.
    """

    def __init__(self, checkpoint_period: int):
        self.checkpoint_period = checkpoint_period

    def after_step(self) -> None:
        it = self.trainer.iter
        if comm.get_world_size() == 1 or not is_checkpoint_iter(
            it, self.checkpoint_period, self.trainer.max_iter
        ):
            return
        prints = comm.all_gather(parameter_fingerprint(self.trainer.model))
        logger.info(
            f"Parameter fingerprint after iteration {it}: {prints[comm.get_rank()]} "
            f"(rank {comm.get_rank()} of {len(prints)})"
        )
        if len(set(prints)) != 1:
            raise RuntimeError(
                f"Replicas diverged after iteration {it}: parameter fingerprints by rank "
                f"{dict(enumerate(prints))}"
            )
