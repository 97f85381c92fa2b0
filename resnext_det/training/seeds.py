"""Several training runs of one config that differ only in ``SEED``: ``OUTPUT_DIR/seed_<k>/``.

Run-to-run variation (weights init and data order) is larger than the effect of the backbone on
small networks, so a comparison needs several runs per model (the comparison reads them as runs
of one model). Each run is an ordinary training run in its own folder, independent of the others:

* :func:`train_seed_runs` trains a list of seeds one after another in this process, or ``parallel``
  of them side by side in spawned processes with one thread each;
* ``tools/train_net.py --seed K`` trains one of them (any launcher, torchrun included), so that a
  cluster scheduler (a Slurm array over K, separate torchrun jobs) can fan them out.

A run is resumed when its folder holds a checkpoint, and skipped when it has finished, so a
command that was killed or pre-empted is simply run again. Each folder is locked by its run
(:mod:`resnext_det.training.lock`); the parent folder is not, so that separate jobs can share it.
With ``DETERMINISTIC True`` (and ``DATALOADER.NUM_WORKERS 0``) the same seed gives the same run.

Interrupts and termination: one policy, in-process or in workers (:mod:`.stopping`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

from ..data import register_from_config
from ..errors import ConfigError
from ..io import write_text_atomic
from ..runtime import configure_process, set_console_verbosity
from ..speed import cpu_training_settings
from .lock import lock_output_dir
from .outputs import check_run_folder
from .state import seeded_run
from .stopping import (
    STOP,
    STOP_SIGNALS,
    RunNotStarted,
    RunStopped,
    SeedRunsInterrupted,
    StopNow,
    StopWhenAsked,
    die_with_parent,
    interrupted,
    last_checkpoint_name,
    stop_on_signals,
    stop_signals_blocked,
    worker_signal,
)
from .trainer import Trainer

__all__ = [
    "RunNotStarted",
    "RunStopped",
    "SeedRunsInterrupted",
    "seed_run_config",
    "seed_run_dir",
    "train_runs",
    "train_seed_run",
    "train_seed_runs",
]

logger = logging.getLogger(__name__)

_LOGGERS = ("detectron2", "fvcore", "resnext_det")

# What every process has once detectron2 is imported (its builtin COCO, LVIS, VOC names): never
# carried to workers (reading them would load their annotation files here, for nothing).
_REGISTERED_ON_IMPORT = frozenset(DatasetCatalog.list())


def seed_run_dir(output_dir: str | os.PathLike, seed: int) -> Path:
    """The folder of the run of ``seed``: ``output_dir/seed_<seed>``."""
    return Path(output_dir) / f"seed_{seed}"


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if not seeds or bad or len(set(seeds)) != len(seeds):
        raise ConfigError(
            "seeds must be distinct non-negative integers (a negative SEED means a random one, "
            f"which no run could repeat), at least one; got {seeds!r}"
        )
    return seeds


def seed_run_config(cfg: CfgNode, seed: int) -> CfgNode:
    """``cfg`` with ``SEED`` = ``seed`` and ``OUTPUT_DIR`` = its seed folder (frozen)."""
    (seed,) = _check_seeds([seed])
    if not cfg.OUTPUT_DIR:
        raise ConfigError("OUTPUT_DIR must be set for seed runs (they go to OUTPUT_DIR/seed_<k>)")
    run = cfg.clone()
    run.defrost()
    run.SEED = seed
    run.OUTPUT_DIR = os.fspath(seed_run_dir(cfg.OUTPUT_DIR, seed))
    run.freeze()
    return run


@contextlib.contextmanager
def _run_log(output_dir: str) -> Iterator[None]:
    """This run's log lines (and only them) into ``output_dir/log.txt``.

    detectron2's ``setup_logger(output)`` is cached per folder and never removes a handler, so
    runs one after another in one process would each write into every earlier run's log.
    """
    for name in _LOGGERS:
        setup_logger(name=name)  # console, once per process
    handler = logging.FileHandler(os.path.join(output_dir, "log.txt"), encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S")
    )
    for name in _LOGGERS:
        logging.getLogger(name).addHandler(handler)
    try:
        yield
    finally:
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def train_seed_run(cfg: CfgNode, seed: int) -> Path:
    """Train (or resume, or skip when finished) the run of ``seed`` in this process.

    What ``tools/train_net.py`` sets up for a run, for this run only: the folder's lock, its log,
    ``config.yaml``, the datasets of ``DATASETS.COCO_REGISTER``, and, restored when it returns
    (:func:`~.state.seeded_run`), every random generator seeded with ``seed`` and deterministic
    kernels when ``DETERMINISTIC``.

    Returns:
        the run's ``model_final.pth``.

    Raises:
        OutputDirInUseError: another live process trains this seed.
        RunNotStarted: a stop had been requested before it started (see the module docstring).
        RunStopped: a stop was requested while it trained; it stopped after an iteration,
            with a checkpoint of it.
    """
    run = seed_run_config(cfg, seed)
    if STOP:
        raise RunNotStarted(seed, run.OUTPUT_DIR)
    lock = lock_output_dir(run.OUTPUT_DIR)
    stopped: RunStopped | None = None
    try:
        with _run_log(run.OUTPUT_DIR):
            logger.info(f"Seed run {seed}: {run.OUTPUT_DIR}")
            write_text_atomic(os.path.join(run.OUTPUT_DIR, "config.yaml"), run.dump())
            with seeded_run(seed, run.DETERMINISTIC):
                register_from_config(run)
                trainer = Trainer(run)
                stop_hook = StopWhenAsked()
                trainer.register_hooks([stop_hook])
                trainer.resume_or_load(resume=True)
                try:
                    trainer.train()
                except StopNow:
                    ckpt = trainer.checkpointer
                    last = ckpt.get_checkpoint_file() if ckpt.has_checkpoint() else None
                    stopped = RunStopped(
                        seed, run.OUTPUT_DIR, stop_hook.stopped_after, last or None
                    )
                    logger.warning(f"Seed run {seed}: {stopped}")
    finally:
        if lock is not None:
            lock.release()
    if stopped is not None:
        raise stopped
    return Path(run.OUTPUT_DIR) / "model_final.pth"


def _carried_datasets(cfg: CfgNode) -> dict[str, tuple[list[dict], dict]]:
    """The data sets of ``cfg`` registered in this process by code (not by
    ``DATASETS.COCO_REGISTER``): their records and metadata, for worker processes to register."""
    own = {entry[0] for entry in cfg.DATASETS.COCO_REGISTER}
    names = dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])
    return {
        name: (DatasetCatalog.get(name), MetadataCatalog.get(name).as_dict())
        for name in names
        if name not in own and name not in _REGISTERED_ON_IMPORT and name in DatasetCatalog.list()
    }


def _worker_init(
    datasets: dict[str, tuple[list[dict], dict]], stop_event: Any = None, parent_pid: int = 0
) -> None:
    # A worker is a process of the pool's own: its entry point sets its process up (signal
    # handlers included: SIGINT/SIGTERM ask its run to stop after an iteration, as in the
    # parent). It started with both signals blocked (train_runs spawns it so), so that none
    # arrives before the handlers are in place. Side-by-side runs share the cores: one thread
    # each (more only oversubscribes them).
    if parent_pid:
        die_with_parent(parent_pid)
    STOP.event = stop_event
    for signum in STOP_SIGNALS:
        signal.signal(signum, worker_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    os.environ["OMP_NUM_THREADS"] = "1"
    configure_process(num_threads=1)
    for name in _LOGGERS:  # the console handlers each run's log reuses, at the parent's verbosity
        setup_logger(name=name)
    set_console_verbosity()
    for name, (records, metadata) in datasets.items():
        DatasetCatalog.register(name, lambda records=records: records)
        metadata = {k: v for k, v in metadata.items() if k != "name"}
        MetadataCatalog.get(name).set(**metadata)


def _one_thread(cfg: CfgNode) -> CfgNode:
    """``cfg`` for a run in a one-thread worker: ``CPU_TRAINING.NUM_THREADS`` 1 where it was 0
    (torch's default), so that the run's settings say how it ran (and resolve for one thread)."""
    node = cfg.get("CPU_TRAINING")
    if node is None or node.NUM_THREADS:
        return cfg
    run = cfg.clone()
    run.defrost()
    run.CPU_TRAINING.NUM_THREADS = 1
    run.freeze()
    return run


def _train_in_worker(cfg: CfgNode, seed: int) -> Path:
    """A run in a pool worker: its process keeps freed memory as ``CPU_TRAINING`` asks."""
    settings = cpu_training_settings(cfg)
    if settings is not None:
        configure_process(keep_freed_memory=settings.keep_freed_memory)
    return train_seed_run(cfg, seed)


def train_seed_runs(cfg: CfgNode, seeds: Sequence[int], *, parallel: int = 1) -> list[Path]:
    """Train the runs of ``seeds`` of ``cfg``, each into ``cfg.OUTPUT_DIR/seed_<k>/``.

    Args:
        cfg: the config; ``SEED`` and ``OUTPUT_DIR`` are set per run, nothing else differs.
        seeds: distinct non-negative seeds, e.g. ``range(3)``.
        parallel: how many runs at once. 1: one after another in this process (whose threads
            and allocator are the caller's: :func:`resnext_det.runtime.configure_process`).
            More: that many worker processes with one thread each (spawned: torch's autograd
            cannot be forked), given the records of the data sets registered in this process.

    Returns:
        each run's ``model_final.pth``, in the order of ``seeds``.

    Raises:
        ConfigError: bad seeds or ``parallel``, or no OUTPUT_DIR.
        Exception: a run's own error, with a note naming its seed and folder (the other runs
            still finish).

    Example::

        finals = train_seed_runs(cfg, range(3))   # [OUT/seed_0/model_final.pth, ...]
    """
    return train_runs([(cfg, seed) for seed in _check_seeds(seeds)], parallel=parallel)


def train_runs(runs: Sequence[tuple[CfgNode, int]], *, parallel: int = 1) -> list[Path]:
    """Train seed runs of one or several configs, ``parallel`` at once (as :func:`train_seed_runs`
    does for one config): the demo puts the runs of both its models in one pool, so that no
    worker waits for another model's last run.

    Returns:
        each run's ``model_final.pth``, in the order of ``runs``.

    Raises:
        SeedRunsInterrupted: SIGINT or SIGTERM arrived (or a worker was sent one) before every
            run finished; see the module docstring.
    """
    runs = list(runs)
    for cfg, seed in runs:  # every run's config and folder are valid before any starts
        check_run_folder(seed_run_config(cfg, seed), None, training=True)
    folders = [seed_run_dir(cfg.OUTPUT_DIR, seed) for cfg, seed in runs]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"two runs would share one folder: {[str(f) for f in folders]}")
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"parallel must be a positive integer; got {parallel!r}")
    STOP.clear()
    try:
        if parallel == 1:
            return _train_here(runs)
        return _train_in_pool(runs, parallel)
    finally:
        STOP.clear()


def _train_here(runs: list[tuple[CfgNode, int]]) -> list[Path]:
    finished: list[Path] = []
    stopped: list[RunStopped] = []
    not_started: list[RunNotStarted] = []
    with stop_on_signals(lambda: None, lambda: None):
        for k, (cfg, seed) in enumerate(runs):
            try:
                finished.append(_noted(train_seed_run, cfg, seed))
            except RunStopped as exc:
                stopped.append(exc)
            except RunNotStarted as exc:
                not_started.append(exc)
            except KeyboardInterrupt:
                if STOP.signum is None:
                    raise  # not ours: the caller's own handling
                folder = os.fspath(seed_run_dir(cfg.OUTPUT_DIR, seed))
                stopped.append(RunStopped(seed, folder, None, last_checkpoint_name(folder)))
                not_started += [
                    RunNotStarted(s, os.fspath(seed_run_dir(c.OUTPUT_DIR, s)))
                    for c, s in runs[k + 1 :]
                ]
                break
    if stopped or not_started:
        raise interrupted(finished, stopped, not_started, [])
    return finished


def _train_in_pool(runs: list[tuple[CfgNode, int]], parallel: int) -> list[Path]:
    carried: dict[str, tuple[list[dict], dict]] = {}
    for cfg, _ in runs:
        carried.update(_carried_datasets(cfg))
    ctx = multiprocessing.get_context("spawn")
    stop_event = ctx.Event()
    STOP.event = stop_event
    pool = ProcessPoolExecutor(
        max_workers=min(parallel, len(runs)),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(carried, stop_event, os.getpid()),
    )
    futures: list[Future] = []

    def cancel_queued() -> None:  # a queued run never starts (workers refuse those already sent)
        for f in futures:
            f.cancel()

    def kill_workers() -> None:
        for process in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(OSError, ValueError):
                process.kill()

    try:
        with stop_on_signals(cancel_queued, kill_workers):
            with stop_signals_blocked():  # the workers are spawned in submit
                futures += [
                    pool.submit(_noted, _train_in_worker, _one_thread(cfg), seed)
                    for cfg, seed in runs
                ]
            if STOP:  # a signal while the workers were being started
                cancel_queued()
            concurrent.futures.wait(futures)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        if STOP.signum is None:
            raise
        finished, stopped, not_started = [], [], []
        for (cfg, seed), f in zip(runs, futures):
            folder = os.fspath(seed_run_dir(cfg.OUTPUT_DIR, seed))
            if f.done() and not f.cancelled() and f.exception() is None:
                finished.append(Path(f.result()))
            elif f.running() or (f.done() and not f.cancelled()):
                stopped.append(RunStopped(seed, folder, None, last_checkpoint_name(folder)))
            else:
                not_started.append(RunNotStarted(seed, folder))
        raise interrupted(finished, stopped, not_started, []) from None
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    finished: list[Path] = []
    stopped: list[RunStopped] = []
    not_started: list[RunNotStarted] = []
    failed: list[BaseException] = []
    for (cfg, seed), f in zip(runs, futures):
        exc = None if f.cancelled() else f.exception()
        if f.cancelled():
            not_started.append(RunNotStarted(seed, os.fspath(seed_run_dir(cfg.OUTPUT_DIR, seed))))
        elif exc is None:
            finished.append(f.result())
        elif isinstance(exc, RunStopped):
            stopped.append(exc)
        elif isinstance(exc, RunNotStarted):
            not_started.append(exc)
        else:
            failed.append(exc)
    if stopped or not_started or STOP.signum is not None:
        raise interrupted(finished, stopped, not_started, failed)
    if failed:
        raise failed[0]
    return finished


def _noted(run, cfg: CfgNode, seed: int) -> Path:
    try:
        return run(cfg, seed)
    except Exception as exc:
        exc.add_note(f"(in the run of SEED {seed}, {seed_run_dir(cfg.OUTPUT_DIR, seed)})")
        raise
