"""A training sampler that can start in the middle of detectron2's infinite index stream.

detectron2's training samplers (``TrainingSampler``, ``RepeatFactorTrainingSampler``,
``RandomSubsetTrainingSampler``) all draw one infinite, seeded stream of dataset indices,
``shuffle(range(n)) + shuffle(range(n)) + ...``, and give rank ``r`` of ``w`` the elements
``r, r + w, r + 2w, ...``. Every run restarts that stream from its first element, so a resumed job
would see again the images of its first iterations. :class:`ResumableSampler` wraps such a sampler
and skips the first ``start`` elements of the global stream: after ``k`` finished iterations of
``SOLVER.IMS_PER_BATCH`` images, ``start = k * IMS_PER_BATCH`` continues exactly where the
interrupted run was, for any number of ranks, provided the seed is the same (the trainer stores it
in the checkpoint).

Exact continuation holds when each batch takes the next ``IMS_PER_BATCH / world_size`` indices of
the rank's stream: ``DATALOADER.ASPECT_RATIO_GROUPING False`` (or all images of one orientation)
and ``DATALOADER.NUM_WORKERS`` 0, or ``start`` a multiple of the number of workers (each
worker of a data loader takes every ``NUM_WORKERS``-th index and forms its own batches). Otherwise
the resumed run draws the same continuation of the stream, but images still waiting in an
aspect-ratio bucket at the time of the checkpoint are not seen, and batches may be formed in a
different order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from detectron2.config import CfgNode
from detectron2.data.samplers import (
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "build_train_sampler"]


class ResumableSampler(Sampler):
    """A detectron2 training sampler positioned ``start`` indices into its global stream.

    Args:
        sampler: a detectron2 training sampler (``TrainingSampler`` or a subclass, or one with
            the same ``_infinite_indices()`` / ``_rank`` / ``_world_size`` interface).
        start: number of indices of the global (all ranks) stream to skip, usually
            ``start_iter * SOLVER.IMS_PER_BATCH``.

    Example::

        >>> base = TrainingSampler(100, seed=7)
        >>> list(itertools.islice(ResumableSampler(base, start=32), 3))  # == stream[32:35]
    """

    def __init__(self, sampler: Sampler, start: int = 0):
        for attr in ("_infinite_indices", "_rank", "_world_size"):
            if not hasattr(sampler, attr):
                raise TypeError(
                    f"ResumableSampler needs a detectron2 training sampler (with {attr}); got "
                    f"{type(sampler).__name__}"
                )
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative integer; got {start!r}")
        self.sampler = sampler
        self.start = start

    def __iter__(self) -> Iterator[int]:
        from detectron2.data.samplers import TrainingSampler

        s = self.sampler
        # TrainingSampler itself draws exactly one randperm(size) per epoch, so whole skipped
        # epochs cost one randperm each and no Python list: resuming at iteration 270k of COCO
        # takes milliseconds. Subclasses draw differently and are skipped element by element.
        if type(s) is TrainingSampler:
            epochs, skip = divmod(self.start, s._size)
            stream = _training_stream(s._size, s._shuffle, s._seed, skip_epochs=epochs)
        else:
            stream, skip = s._infinite_indices(), self.start
        return itertools.islice(stream, skip + s._rank, None, s._world_size)


def _training_stream(size: int, shuffle: bool, seed: int, *, skip_epochs: int) -> Iterator[int]:
    """``TrainingSampler._infinite_indices`` from epoch ``skip_epochs`` on."""
    g = torch.Generator()
    g.manual_seed(seed)
    for _ in range(skip_epochs if shuffle else 0):
        torch.randperm(size, generator=g)
    while True:
        if shuffle:
            yield from torch.randperm(size, generator=g).tolist()
        else:
            yield from range(size)


_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler")


def build_train_sampler(cfg: CfgNode, dataset: list[dict], *, seed: int, start: int = 0):
    """``DATALOADER.SAMPLER_TRAIN`` with an explicit seed, positioned ``start`` images in."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        base = TrainingSampler(len(dataset), seed=seed)
    elif name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        base = RepeatFactorTrainingSampler(factors, seed=seed)
    elif name == "RandomSubsetTrainingSampler":
        base = RandomSubsetTrainingSampler(
            len(dataset), cfg.DATALOADER.RANDOM_SUBSET_RATIO, seed_shuffle=seed, seed_subset=seed
        )
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN must be one of {_SAMPLERS}; got {name!r}")
    return ResumableSampler(base, start=start)
