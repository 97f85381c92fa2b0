"""Checkpoints that a kill, a full disk or a failing write cannot corrupt.

fvcore's ``Checkpointer.save`` writes ``model_XXXXXXX.pth`` in place and then rewrites
``last_checkpoint`` in place: a job killed (pre-emption, OOM killer, time limit) in the middle of
either leaves a truncated file that ``--resume`` then tries to load. Here both are written to a
temporary file in the same directory, flushed and fsynced, and renamed over the target with
``os.replace`` (atomic on POSIX and Windows), and ``last_checkpoint`` is only moved once the
checkpoint it names is whole. Whatever the moment of a kill, ``last_checkpoint`` names a complete
file, or does not exist yet.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .. import io as atomic_io
from ..io import TMP_MARK, AtomicWriteError
from ..weights.checkpointer import ResNeXtCheckpointer, model_metadata

__all__ = [
    "CheckpointWriteError",
    "TrainingCheckpointer",
    "atomic_write",
    "PAUSE_ENV",
]

logger = logging.getLogger(__name__)

# For crash tests only: "SECONDS" or "SECONDS:GLOB" makes atomic_write sleep after a temporary
# file is written and fsynced and before it is renamed into place (for files whose name matches
# GLOB, default all), so that a test can SIGKILL the process inside that window.
PAUSE_ENV = "RESNEXT_DET_TEST_PAUSE_BEFORE_RENAME"


class CheckpointWriteError(AtomicWriteError):
    """A checkpoint (or ``last_checkpoint``) could not be written; the previous one is intact."""

    disk_full_hint = "free space there or point OUTPUT_DIR elsewhere"


def _test_pause(tmp: Path, path: Path) -> None:
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return
    seconds, _, pattern = value.partition(":")
    if fnmatch.fnmatch(path.name, pattern or "*"):
        logger.warning(f"{PAUSE_ENV}={value}: pausing before renaming {tmp} -> {path}")
        time.sleep(float(seconds))


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(file)``: it is either the old file or the whole new one.

    :func:`resnext_det.io.atomic_write` (temporary file in the same directory, fsync, rename,
    fsync of the directory), with the crash-test pause of :data:`PAUSE_ENV` before the rename.

    Args:
        path: destination file.
        write: called with the open binary file; writes the content.

    Raises:
        CheckpointWriteError: the write, flush, fsync or rename failed (full disk, quota, I/O
            error, read-only filesystem); the message names ``path`` and the cause.
    """
    atomic_io.atomic_write(path, write, error=CheckpointWriteError, before_replace=_test_pause)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the temporary files that a killed :func:`atomic_write` left in ``directory``."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".*{TMP_MARK}*")):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed


class TrainingCheckpointer(ResNeXtCheckpointer):
    """The project's checkpointer (it loads every supported weight layout) with durable saves.

    ``ResNeXtCheckpointer`` already writes the checkpoint file atomically; this adds what a
    training job needs: an atomic ``last_checkpoint``, errors that say what is still intact,
    clean-up of temporaries on resume, and a pause hook for crash tests.

    Saving: the checkpoint file, then ``last_checkpoint``, each through :func:`atomic_write`.
    A failed save raises :class:`CheckpointWriteError` naming the file and leaves the previous
    checkpoint and ``last_checkpoint`` as they were.

    Resuming: temporaries left by a killed save are deleted, and a ``last_checkpoint`` that names
    a missing file is an error that says so (fvcore asserts "Checkpoint ... not found!").

    Paths with a ``scheme://`` (remote storage through iopath) keep fvcore's non-atomic save.
    """

    def _is_local(self) -> bool:
        return "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        # The input conventions (pixel mean/std, format, stride place) travel with the weights.
        model = getattr(self.model, "module", self.model)  # unwrap DistributedDataParallel
        metadata = model_metadata(model)
        if metadata:
            data["resnext_det"] = metadata
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name must be a plain file name; got {name!r}")
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        try:
            atomic_write(save_file, lambda f: torch.save(data, f))
        except CheckpointWriteError as exc:
            raise CheckpointWriteError(exc.errno, f"{exc.strerror}. {self._previous()}") from exc
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        previous = self._previous()
        try:
            atomic_write(path, lambda f: f.write(last_filename_basename.encode()))
        except CheckpointWriteError as exc:
            raise CheckpointWriteError(
                exc.errno,
                f"{exc.strerror}. {last_filename_basename} was written whole, but {previous}",
            ) from exc

    def _previous(self) -> str:
        if self.has_checkpoint() and self.get_checkpoint_file():
            return (
                f"The previous checkpoint, {self.get_checkpoint_file()} (named in "
                f"{os.path.join(self.save_dir, 'last_checkpoint')}), is intact: resume from it "
                "with --resume"
            )
        return f"No earlier checkpoint exists in {self.save_dir}"

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        if resume and self.save_dir and self._is_local():
            if self.save_to_disk:
                for tmp in remove_stale_temporaries(self.save_dir):
                    self.logger.info(f"Removed {tmp}, left by a save that was interrupted")
            if self.has_checkpoint():
                last = self.get_checkpoint_file()
                if not os.path.isfile(last):
                    raise FileNotFoundError(
                        f"{os.path.join(self.save_dir, 'last_checkpoint')} names {last}, which "
                        "does not exist (deleted or moved?). Restore it, or delete "
                        "last_checkpoint to start from MODEL.WEIGHTS."
                    )
        return super().resume_or_load(path, resume=resume)
