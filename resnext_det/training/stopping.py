"""How seed runs stop: SIGINT/SIGTERM, a dead parent, and what is reported (:mod:`.seeds`).

Interrupts and termination (one policy, in-process or in workers):

* SIGINT (Ctrl-C) or SIGTERM to the process that called :func:`train_runs` stops the queue: no
  run starts after it (the queued ones are reported "not started"); each running run finishes
  its current iteration, writes a checkpoint of it (atomically, never cut by the signal) and
  stops. :func:`train_runs` then raises :class:`SeedRunsInterrupted`, which names what finished,
  what stopped where, and what did not start; ``tools/train_net.py`` prints it and exits 130
  (SIGINT) or 143 (SIGTERM). Running the same command again resumes: finished runs are skipped,
  stopped ones continue from their checkpoint. A second signal does not wait: the workers are
  killed (their last whole checkpoint stays).
* The handlers are :func:`train_runs`' only while its runs go, in the main thread, and the
  previous ones are put back afterwards (a signal the caller ignores stays ignored; called from
  another thread, it installs none and the caller's handling applies).
* Workers die with their parent: each worker asks the kernel for SIGKILL when the process that
  started it dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere a thread watching the parent's
  pid), so a parent killed with SIGKILL leaves no orphan training on or holding a folder's lock.
  Workers ignore nothing: SIGINT/SIGTERM sent to them (the process group's Ctrl-C) are the same
  stop request. They are started with both signals blocked until their handlers are in place.

The names outside ``__all__`` are the tools :mod:`.seeds` uses, not the package's API.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from detectron2.engine import HookBase

from .hooks import is_checkpoint_iter

__all__ = ["RunNotStarted", "RunStopped", "SeedRunsInterrupted"]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """A run stopped on request (SIGINT/SIGTERM) before it finished; ``checkpoint`` (or None)
    is where it resumes from."""

    def __init__(self, seed: int, folder: str, iteration: int | None, checkpoint: str | None):
        super().__init__(seed, folder, iteration, checkpoint)
        self.seed, self.folder, self.iteration, self.checkpoint = (
            seed,
            folder,
            iteration,
            checkpoint,
        )

    def __str__(self) -> str:
        where = f"after iteration {self.iteration}" if self.iteration is not None else "at start"
        resume = f"resumes from {self.checkpoint}" if self.checkpoint else "starts over"
        return f"seed {self.seed} ({self.folder}) stopped {where}; it {resume}"


class RunNotStarted(Exception):
    """A run that was not started because a stop had been requested."""

    def __init__(self, seed: int, folder: str):
        super().__init__(seed, folder)
        self.seed, self.folder = seed, folder

    def __str__(self) -> str:
        return f"seed {self.seed} ({self.folder}) was not started"


class SeedRunsInterrupted(KeyboardInterrupt):
    """Seed runs stopped by SIGINT or SIGTERM: what finished, what stopped, what did not start.

    A ``KeyboardInterrupt`` (a caller that catches interrupts catches it); ``exit_status`` is
    the shell's ``128 + signal`` (130 for SIGINT, 143 for SIGTERM), and the message says how
    to resume.
    """

    def __init__(
        self,
        signum: int,
        finished: Sequence[Path],
        stopped: Sequence[RunStopped],
        not_started: Sequence[RunNotStarted],
        failed: Sequence[BaseException] = (),
    ):
        self.signum = signum
        self.finished, self.stopped = list(finished), list(stopped)
        self.not_started, self.failed = list(not_started), list(failed)
        super().__init__(self._message())

    @property
    def exit_status(self) -> int:
        return 128 + int(self.signum)

    def _message(self) -> str:
        name = signal.Signals(self.signum).name
        parts = [f"interrupted by {name}"]
        parts.append("finished: " + (", ".join(str(p.parent) for p in self.finished) or "none"))
        if self.stopped:
            parts.append("stopped: " + "; ".join(str(r) for r in self.stopped))
        if self.not_started:
            seeds = ", ".join(f"seed {r.seed} ({r.folder})" for r in self.not_started)
            parts.append(f"not started: {seeds}")
        if self.failed:
            parts.append("failed: " + "; ".join(" ".join(str(e).split()) for e in self.failed))
        parts.append(
            "run the same command again to go on: finished runs are skipped, stopped ones "
            "resume from their checkpoint"
        )
        return ". ".join(parts)


class _StopRequest:
    """Whether this process was asked to stop: by its own signal handler (``local``) or, in a
    worker, by the parent through a shared event."""

    def __init__(self) -> None:
        self.local = False
        self.signum: int | None = None
        self.event: Any = None

    def __bool__(self) -> bool:
        return self.local or (self.event is not None and self.event.is_set())

    def request(self, signum: int) -> None:
        self.signum = self.signum or signum
        self.local = True
        if self.event is not None:
            self.event.set()

    def clear(self) -> None:
        self.local, self.signum, self.event = False, None, None


STOP = _StopRequest()


class StopNow(BaseException):
    # A BaseException: detectron2's TrainerBase.train logs every Exception as a crash.
    pass


class StopWhenAsked(HookBase):
    """Stops training between iterations once a stop is requested: after the periodic
    checkpointer, a checkpoint of the iteration just done (unless it was one already, or the
    weights are not finite), then :class:`StopNow`. The last iteration just finishes."""

    def __init__(self) -> None:
        self.stopped_after: int | None = None  # the last iteration done when it stopped

    def before_train(self) -> None:
        trainer = self.trainer
        if STOP and trainer.start_iter < trainer.max_iter:
            self.stopped_after = trainer.start_iter - 1 if trainer.start_iter else None
            raise StopNow

    def after_step(self) -> None:
        trainer = self.trainer
        if not STOP or trainer.iter >= trainer.max_iter - 1:
            return
        period = trainer.cfg.SOLVER.CHECKPOINT_PERIOD
        finite = all(p.isfinite().all() for p in trainer.model.parameters())
        if finite and not is_checkpoint_iter(trainer.iter, period, trainer.max_iter):
            trainer.checkpointer.save(f"model_{trainer.iter:07d}", iteration=trainer.iter)
        self.stopped_after = trainer.iter
        raise StopNow


def die_with_parent(parent_pid: int) -> None:
    """Have this process killed (SIGKILL) when ``parent_pid`` dies, however it dies.

    Linux: ``prctl(PR_SET_PDEATHSIG)`` (fires when the thread that started this process ends,
    which for the pool is the thread blocked in :func:`train_runs` until the pool is done).
    Elsewhere: a daemon thread that polls the parent's pid. A parent that died before this
    ran is seen at once (this process was re-parented).
    """
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            logger.warning(f"prctl(PR_SET_PDEATHSIG) failed ({os.strerror(err)}); watching")
            _watch_parent(parent_pid)
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def worker_signal(signum: int, frame: Any) -> None:
    STOP.request(signum)


@contextlib.contextmanager
def stop_on_signals(on_first: Callable[[], None], on_second: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM request a stop (:data:`STOP`) and call ``on_first`` while the block
    runs; a second one calls ``on_second`` and raises ``KeyboardInterrupt``. Only in the main
    thread, never for a signal the caller ignores; the previous handlers are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if STOP.signum is None:
            STOP.request(signum)
            logger.warning(
                f"{signal.Signals(signum).name}: stopping the seed runs; no run starts from "
                "now, running ones stop after their current iteration with a checkpoint "
                "(send it again to kill them now)"
            )
            on_first()
            return
        on_second()
        raise KeyboardInterrupt

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def interrupted(
    finished: list[Path], stopped: list, not_started: list, failed: list
) -> SeedRunsInterrupted:
    return SeedRunsInterrupted(
        STOP.signum or signal.SIGTERM, finished, stopped, not_started, failed
    )


def last_checkpoint_name(folder: str) -> str | None:
    try:
        name = Path(folder, "last_checkpoint").read_text().strip()
    except OSError:
        return None
    return os.path.join(folder, name) if name else None


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGINT/SIGTERM held back (not lost) in this thread while the block runs: processes
    started in it inherit the blocked mask (until their initializer unblocks it), so that no
    worker takes a KeyboardInterrupt while it imports."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
