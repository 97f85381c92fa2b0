"""A sweep's cells (one variant, one seed): the output folder's settings, training, evaluation,
and the whole job (:func:`run_sweep`) or one cell of it (:func:`run_cell`)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import write_json_atomic
from ..reading import read_json_file
from .plan import (
    _POLL_SECONDS,
    EVALUATION_DIR,
    SETTINGS_FILE,
    SweepError,
    SweepPlan,
    SweepVariant,
    cell_state,
)
from .report import write_report

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _shown(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "(unset)"


def _differences(there: dict[str, Any], here: dict[str, Any]) -> list[str]:
    # Through JSON both ways: a tuple here is a list there.
    a, b = (_flat(json.loads(json.dumps(s))) for s in (there, here))
    a.pop("variants", None), b.pop("variants", None)  # follow from the rest
    return [
        f"{k.removeprefix('config.')} {_shown(a, k)} there, {_shown(b, k)} here"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def load_settings(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The settings of the sweep in ``out_dir``, or None when it holds none."""
    path = Path(out_dir) / SETTINGS_FILE
    if not path.is_file():
        return None
    return read_json_file(path, "sweep settings file")


def claim_out_dir(plan: SweepPlan, *, create: bool = True) -> None:
    """Record the plan's settings in ``out_dir`` or check that the sweep there has the same.

    Args:
        create: write the settings when ``out_dir`` holds none; False (a report of cells that
            must exist already) refuses such a folder instead.

    Raises:
        SweepError: ``out_dir`` holds a sweep with other settings (the differences named), or
            no sweep at all and ``create`` is False.
    """
    here = plan.settings()
    path = plan.out_dir / SETTINGS_FILE
    there = load_settings(plan.out_dir)
    if there is None:
        if not create:
            raise SweepError("out_dir", f"{str(plan.out_dir)!r} holds no sweep (no {path.name})")
        write_json_atomic(path, here, indent=1)
        there = load_settings(plan.out_dir)  # another job may have written at the same time
    diff = _differences(there, here)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise SweepError(
            "out_dir",
            f"{str(plan.out_dir)!r} holds a sweep with other settings ({path}): {shown}. "
            "Use another folder for this sweep, or the settings recorded there",
        )


def train_cells(
    plan: SweepPlan, cells: Sequence[tuple[SweepVariant, int]], *, parallel: int = 1
) -> list[tuple[SweepVariant, int]]:
    """Train the cells that have no ``model_final.pth`` yet (a killed one resumes from its
    checkpoint), ``parallel`` at once in one pool of one-thread workers
    (:func:`~resnext_det.training.train_runs`; 1: one after another in this process).

    Returns:
        the cells trained now (the others were done already).
    """
    from ..training import train_runs

    todo = [(v, k) for v, k in cells if cell_state(plan, v, k) == "todo"]
    if not todo:
        return []
    logger.info(
        f"sweep: training {len(todo)} of {len(cells)} cells, {min(parallel, len(todo))} at a "
        f"time: {[f'{v.name}/seed_{k}' for v, k in todo]}"
    )
    train_runs([(plan.variant_config(v), k) for v, k in todo], parallel=parallel)
    return todo


def evaluate_cell(
    plan: SweepPlan,
    variant: SweepVariant,
    seed: int,
    *,
    inference: Any = None,
    progress: bool = True,
) -> Path:
    """Evaluate the trained cell on the test set, once, into ``<run>/evaluation/``
    (:func:`~resnext_det.evaluation.compare_models` of this one run, with the
    :class:`~resnext_det.speed.InferenceSettings` ``inference``: its results json, AP, ...).

    Returns:
        the evaluation's ``comparison.json``.
    """
    from ..data import register_from_config
    from ..evaluation import compare_models
    from ..training import seed_run_config

    out = plan.run_dir(variant, seed) / EVALUATION_DIR
    if cell_state(plan, variant, seed) == "evaluated":
        return out / "comparison.json"
    weights = plan.run_dir(variant, seed) / "model_final.pth"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: the cell {variant.name}/seed_{seed} is not trained")
    register_from_config(plan.config)
    cfg = seed_run_config(plan.variant_config(variant), seed)
    compare_models(
        {variant.name: (cfg, weights)},
        plan.test_set,
        out,
        bootstrap=0,
        gallery=0,
        device=cfg.MODEL.DEVICE,
        inference=inference,
        progress=progress,
    )
    return out / "comparison.json"


# ------------------------------------------------------------------------------------------
# The report


# ------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    report: dict[str, Any]
    trained: list[tuple[str, int]] = field(default_factory=list)  # (variant, seed) trained now
    evaluated: list[tuple[str, int]] = field(default_factory=list)  # evaluated now


def run_sweep(
    plan: SweepPlan,
    *,
    parallel: int | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    inference: Any = None,
    progress: bool = True,
) -> SweepResult:
    """Train what is not trained, evaluate what is not evaluated, write the report.

    Args:
        plan: from :func:`plan_sweep`; its folder is claimed first (:func:`claim_out_dir`).
        parallel: runs at once, one thread each, in one pool (default: the machine's cores);
            1: one after another in this process (whose threads are the caller's). With a
            pool, a thread of this process evaluates finished cells while the last runs train.
        bootstrap, confidence: the comparison's resamples and family-wise confidence.
        inference: how the runs are evaluated (:func:`evaluate_cell`).

    Returns:
        the report and the cells trained and evaluated by this call (a re-run of a finished
        sweep trains and evaluates nothing).
    """
    claim_out_dir(plan)
    cells = plan.cells()
    workers = parallel or max(1, min(os.cpu_count() or 1, len(cells)))
    evaluated: list[tuple[str, int]] = []

    def evaluate_trained(stop: threading.Event | None = None) -> None:
        for v, k in cells:
            if stop is not None and stop.is_set():
                return
            if cell_state(plan, v, k) == "trained":
                evaluate_cell(plan, v, k, inference=inference, progress=progress)
                evaluated.append((v.name, k))

    if workers == 1:
        trained = train_cells(plan, cells, parallel=1)
    else:
        trained = _train_evaluating_the_tail(plan, cells, workers, evaluate_trained)
    evaluate_trained()
    report = write_report(plan, bootstrap=bootstrap, confidence=confidence, progress=progress)
    return SweepResult(report, [(v.name, k) for v, k in trained], evaluated)


def _train_evaluating_the_tail(
    plan: SweepPlan,
    cells: list[tuple[SweepVariant, int]],
    workers: int,
    evaluate_trained: Callable[[threading.Event], None],
) -> list[tuple[SweepVariant, int]]:
    """:func:`train_cells` in a pool of ``workers``, in this thread (where ``train_runs`` handles
    SIGINT/SIGTERM), while a second thread evaluates the finished cells once fewer runs are left
    than workers: a core is idle then (the sweep's tail), and the evaluations need not wait for
    the last run."""
    todo = [(v, k) for v, k in cells if cell_state(plan, v, k) == "todo"]
    stop = threading.Event()
    failures: list[BaseException] = []

    def evaluator() -> None:
        try:
            while not stop.wait(_POLL_SECONDS):
                if sum(cell_state(plan, v, k) == "todo" for v, k in todo) < workers:
                    evaluate_trained(stop)
        except Exception as exc:  # raised in the caller's thread once training is over
            failures.append(exc)

    thread = threading.Thread(target=evaluator, name="sweep-evaluation", daemon=True)
    thread.start()
    try:
        trained = train_cells(plan, cells, parallel=workers)
    finally:
        stop.set()
        thread.join()
    if failures:
        raise failures[0]
    return trained


def run_cell(
    plan: SweepPlan,
    variant: SweepVariant,
    seed: int,
    *,
    inference: Any = None,
    progress: bool = True,
) -> Path:
    """Train (or resume, or skip) and evaluate one cell in this process: one job of a cluster
    array into the sweep's folder; ``write_report`` later gathers whatever cells are done.

    Returns:
        the cell's evaluation ``comparison.json``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < plan.runs:
        raise SweepError(
            "seed", f"must be one of the sweep's seeds 0..{plan.runs - 1}; got {seed!r}"
        )
    claim_out_dir(plan)
    train_cells(plan, [(variant, seed)], parallel=1)
    return evaluate_cell(plan, variant, seed, inference=inference, progress=progress)
