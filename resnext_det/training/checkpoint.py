"""The training job's checkpointer: the project's durable save, plus what resuming needs.

fvcore's ``Checkpointer.save`` writes ``model_XXXXXXX.pth`` and then ``last_checkpoint`` in place:
a job killed (pre-emption, OOM killer, time limit) in the middle of either leaves a truncated file
that ``--resume`` then tries to load. :class:`~resnext_det.weights.ResNeXtCheckpointer` (the one
save of this package) writes both atomically; this module adds the error type a training job
reports and the clean-up a resumed job does.
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Any

from ..io import TMP_MARK, AtomicWriteError
from ..weights.checkpointer import ResNeXtCheckpointer

__all__ = ["CheckpointWriteError", "TrainingCheckpointer", "remove_stale_temporaries"]


class CheckpointWriteError(AtomicWriteError):
    """A checkpoint (or ``last_checkpoint``) could not be written; the previous one is intact."""

    disk_full_hint = "free space there or point OUTPUT_DIR elsewhere"


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the temporary files that a killed atomic write left in ``directory``."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".*{TMP_MARK}*")):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
            removed.append(tmp)
    return removed


class TrainingCheckpointer(ResNeXtCheckpointer):
    """The project's checkpointer (every weight layout, atomic saves) for a training job.

    Saving is :class:`~resnext_det.weights.ResNeXtCheckpointer`'s; a failed save raises
    :class:`CheckpointWriteError` naming the file and leaves the previous checkpoint and
    ``last_checkpoint`` as they were.

    Resuming: temporaries left by a killed save are deleted (the run lock of
    :mod:`resnext_det.training.lock` guarantees they are no live run's), and a
    ``last_checkpoint`` that names a missing file is an error that says so (fvcore asserts
    "Checkpoint ... not found!").
    """

    write_error = CheckpointWriteError

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
