"""The timing loop: every variant of a (model, task) timed in interleaved rounds, with the
machine's peak measured in the same rounds and the load recorded around them."""

from __future__ import annotations

import contextlib
import os
import statistics

import torch

from resnext_det.env import machine_info
from resnext_det.speed import max_relative_error

from .measure import PeakProbe, load_average, quantile, quiet_verdict
from .process import (
    AllocatorProcess,
    BenchmarkWorkerError,
    LocalRunner,
    started_keeping_freed_memory,
)
from .settings import (
    BASELINE,
    DEFAULT_SETTINGS,
    SETTINGS,
    TASKS,
    BenchmarkInputError,
)
from .variants import bench_config, build_variants

__all__ = ["run_benchmark", "MIN_ROUNDS", "MEMORY_MODES", "wants_freed_memory_kept"]

# Fewer interleaved rounds than this and the report calls its figures indicative only.
MIN_ROUNDS = 5
# What run_benchmark(memory=...) can do with the allocator's freed memory.
MEMORY_MODES = ("returned", "kept", "as-shipped")


def _check_arguments(tasks, settings, repeats, batch, size, clock, device) -> torch.device:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise BenchmarkInputError("tasks", f"unknown {unknown}; known: {list(TASKS)}")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise BenchmarkInputError("settings", f"unknown {unknown}; known: {list(SETTINGS)}")
    for name, value in (("repeats", repeats), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BenchmarkInputError(name, f"must be a positive integer; got {value!r}")
    if len(size) != 2 or min(size) < 32:
        raise BenchmarkInputError(
            "size", f"must be two numbers (H, W) of at least 32; got {tuple(size)}"
        )
    if clock not in ("wall", "cpu"):
        raise BenchmarkInputError("clock", f"must be 'wall' or 'cpu'; got {clock!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkInputError("device", f"{device}: CUDA is not available to this torch")
    return dev


def run_benchmark(
    *,
    models: list[str] | tuple[str, ...] = ("X-50-32x4d",),
    tasks: list[str] | tuple[str, ...] = ("forward",),
    settings: list[str] | tuple[str, ...] = DEFAULT_SETTINGS,
    device: str = "cpu",
    size: tuple[int, int] = (800, 1216),
    batch: int = 1,
    repeats: int = MIN_ROUNDS,
    warmup: int = 1,
    seed: int = 0,
    clock: str = "wall",
    peak: bool = True,
    memory: str = "returned",
    progress: bool = True,
    verbose: bool = False,
) -> dict:
    """Time ``settings`` of each model on each task, interleaved, against detectron2's ResNet.

    For each (model, task) every variant is built from the same weights (detectron2's
    ``build_resnet_backbone`` / ``build_resnet_fpn_backbone`` with non-trivial norm statistics,
    loaded into the others), warmed up ``warmup`` times, checked against the baseline's outputs
    (:func:`max_relative_error`; backward: the input gradient; train: the RPN losses), measured
    for peak memory, and then timed in ``repeats`` rounds of one call each, A B C A B C ...,
    so that load from other processes falls on all variants alike. Each round also times the
    machine's peak (:class:`PeakProbe`: fp32 and bf16 matrix products and 1x1 convolutions on the
    same threads), so every figure comes with its fraction of the peak under the same load.

    Args:
        models: names from :data:`BENCH_MODELS`.
        tasks: from :data:`TASKS`: ``forward`` (backbone, inference mode), ``backward`` (backbone
            forward + backward), ``train`` (one Faster R-CNN FPN training iteration: forward,
            losses, backward, SGD step) and ``inference`` (Faster R-CNN FPN, ``batch`` images).
        settings: names from :data:`SETTINGS`; those that do not apply to a task are skipped.
            The baseline (``detectron2``) is always run.
        device: "cpu" or "cuda" (or "cuda:N").
        size: (H, W) of the images.
        batch: images per call.
        repeats: timed rounds (at least :data:`MIN_ROUNDS` for figures to quote).
        warmup: untimed calls of each variant first (``torch.compile`` compiles in the first).
        seed: weights, norm statistics and images.
        clock: what the statistics are of: "wall" (``time.perf_counter``) or "cpu" (the
            process's CPU time, ``time.process_time``). Both are recorded.
        peak: time the machine's peak in every round.
        memory: what the allocator does with freed memory (a process setting,
            :func:`resnext_det.runtime.keep_freed_memory`; each record counts its minor page
            faults per call and says which its process had): ``"returned"`` (glibc's default, for
            every variant), ``"kept"`` (for every variant, the baseline included) or
            ``"as-shipped"`` (each path as its tools run it: the variants whose setting
            ``keeps_freed_memory``, the project's CPU training defaults and folded inference,
            with freed memory kept, the rest, detectron2 included, with the default; on CPU
            only). The benchmark never changes this process's allocator: this process is taken
            to have the setting it was started with
            (:func:`~benchmarks.process.started_keeping_freed_memory`), and the variants that
            need the other one run in a child process started with it
            (:class:`~benchmarks.process.AllocatorProcess`, which measures what its allocator
            does: :func:`~benchmarks.process.freed_memory_probe`); the rounds stay interleaved.
        progress: tqdm bars.
        verbose: let the profiler's own console lines through (the CPU memory measure).

    Returns:
        a json-ready dict: ``machine``, ``config``, ``load_average_*``, ``quiet``, ``peak``,
        ``allocator`` (each process that ran variants: this one, with the setting it was
        started with, and each child, with what it measured) and ``results`` (one record per
        variant).

    Raises:
        BenchmarkInputError: an argument is not allowed (``.field`` names it).
    """
    dev = _check_arguments(tasks, settings, repeats, batch, size, clock, device)
    if memory not in MEMORY_MODES:
        raise BenchmarkInputError("memory", f"must be one of {MEMORY_MODES}; got {memory!r}")
    names = [BASELINE] + [s for s in settings if s != BASELINE]
    size = (int(size[0]), int(size[1]))
    records = []
    loads = [load_average()]
    peaks = {}
    kept_here = started_keeping_freed_memory()
    here = {"process": "this", "pid": os.getpid(), "freed_memory": "kept" if kept_here else
            "returned", "measure": "environment at start"}  # fmt: skip
    allocators = [here]
    for model_name in models:
        for task in tasks:
            case = dict(model_name=model_name, task=task, device=str(dev), size=size, batch=batch,
                        seed=seed)  # fmt: skip
            with contextlib.ExitStack() as stack:
                runners, children, gmacs = _runners(
                    case, names, memory, here["freed_memory"], peak, clock, verbose, stack
                )
                allocators += [
                    {"process": "child", "pid": c.pid, "case": f"{model_name} {task}",
                     "started_with_keep_freed_memory_env": c.keep_freed_memory, **c.probe,
                     "measure": "freed_memory_probe"}
                    for c in children
                ]  # fmt: skip
                label = f"{model_name} {task}"
                peaks[label], timings = _time_rounds(
                    label, dev, here["freed_memory"], runners, children, repeats, warmup, peak,
                    clock, loads, progress,
                )  # fmt: skip
                records += _records(case, runners, timings, gmacs, peaks[label], clock)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    loads.append(load_average())
    # "kept" asked for and had by every variant (off glibc no process can keep it).
    memory_kept = memory == "kept" and all(r["freed_memory"] == "kept" for r in records)
    return {
        "machine": machine_info(dev),
        "config": {
            "models": list(models),
            "tasks": list(tasks),
            "settings": names,
            "device": str(dev),
            "size": list(size),
            "batch": batch,
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "clock": clock,
            "memory": memory,
            "freed_memory_kept": memory_kept,
            "freed_memory_here": here["freed_memory"],
        },
        "load_average_before": loads[0],
        "load_average_after": loads[-1],
        "load_average_samples": [v for v in loads if v],
        "quiet": quiet_verdict(loads, own_threads=torch.get_num_threads()),
        "enough_rounds": repeats >= MIN_ROUNDS,
        "peak": peaks,
        "allocator": allocators,
        "results": records,
    }


def wants_freed_memory_kept(memory: str, setting, device: torch.device) -> bool:
    """Whether ``setting`` is to run with freed memory kept under ``memory`` (a mode of
    :data:`MEMORY_MODES`); as-shipped: what the project's commands do, on the CPU only."""
    if memory == "as-shipped":
        return torch.device(device).type == "cpu" and setting.keeps_freed_memory
    return memory == "kept"


def _runners(case, names, memory, freed_here, peak, clock, verbose, stack):
    """The runner of every setting that applies, in ``names``' order (baseline first), the
    child process they need (entered on ``stack``; one at most: the variants whose allocator
    setting this process has not, started with it), and the case's multiply-adds."""
    dev = torch.device(case["device"])
    cfg = bench_config(case["model_name"], dev, case["task"])
    settings = [SETTINGS[n].resolve(cfg) for n in names if SETTINGS[n].applies_to(case["task"])]
    settings = [s for s in settings if s is not None]
    kept_here = freed_here == "kept"
    away = [s for s in settings if wants_freed_memory_kept(memory, s, dev) != kept_here]
    here = [s for s in settings if s not in away]
    local, checksum, gmacs = build_variants(**case, settings=here, count_macs=True)
    by_name = {v.setting.name: LocalRunner(v, dev, freed_here, verbose) for v in local}
    children = []
    if away:
        child = stack.enter_context(
            AllocatorProcess(
                case,
                away,
                keep_freed_memory=not kept_here,
                threads=torch.get_num_threads(),
                peak=peak,
                clock=clock,
                verbose=verbose,
            )
        )
        if child.checksum != checksum:
            raise BenchmarkWorkerError(
                f"benchmark: the child process built other weights for {case['model_name']} "
                f"{case['task']} (checksum {child.checksum!r}, here {checksum!r})"
            )
        by_name.update({r.setting.name: r for r in child.runners})
        children.append(child)
    return [by_name[s.name] for s in settings], children, gmacs


def _time_rounds(
    label, dev, freed_here, runners, children, repeats, warmup, peak, clock, loads, progress
):
    """Warm up, check and measure the memory of each runner, then time ``repeats`` interleaved
    rounds (with the peak probe of this process and of each child); returns the merged peak
    and per setting its outputs' error, memory and per-call wall/CPU times and faults."""
    from tqdm import tqdm

    expected = None
    timings = {}
    for r in tqdm(runners, desc=f"{label}: warm-up", disable=not progress):
        r.warm(warmup)
        got = r.check()
        if expected is None:
            expected = got
        timings[r.setting.name] = {
            "error": max_relative_error(got, expected),
            "memory": r.memory(),
            "calls": [],
        }
    del expected
    probe = PeakProbe(dev, clock=clock) if peak else None
    if probe:
        probe.warmup()
    for _ in tqdm(range(repeats), desc=f"{label}: rounds", disable=not progress):
        if probe:
            probe.round()
        for child in children:
            child.probe_round()
        for r in runners:
            timings[r.setting.name]["calls"].append(r.timed())
        loads.append(load_average())
    summaries = [(freed_here, probe.summary())] if probe else []
    summaries += [(c.freed_memory, c.probe_summary()) for c in children]
    return _merge_peaks(summaries), timings


def _merge_peaks(summaries: list[tuple[str, dict]]) -> dict:
    """Per dtype the faster peak of those measured in each process (the machine's peak is the
    best it was seen to do), with ``freed_memory`` saying what that process's allocator did."""
    merged = {}
    for freed, summary in summaries:
        for dtype, p in summary.items():
            if dtype not in merged or p["gmacs_per_s"] > merged[dtype]["gmacs_per_s"]:
                merged[dtype] = {**p, "freed_memory": freed}
    return merged


def _records(case, runners, timings, gmacs_and_note, group_peak, clock) -> list[dict]:
    gmacs, gmacs_note = gmacs_and_note
    batch, dev = case["batch"], torch.device(case["device"])
    times = {}
    for name, t in timings.items():
        walls, cpus, faults = zip(*t["calls"])
        times[name] = {"wall": list(walls), "cpu": list(cpus), "faults": faults}
    base = statistics.median(times[BASELINE][clock])
    records = []
    for r in runners:
        s, measured = r.setting, timings[r.setting.name]
        t = times[s.name][clock]
        faults = [f for f in times[s.name]["faults"] if f is not None]
        med = statistics.median(t)
        amp = s.amp_dtype(dev) or "float32"
        achieved = gmacs * batch / med
        peak_dtype = amp if amp in group_peak else "float32"
        ref_peak = group_peak.get(peak_dtype)
        records.append(
            {
                "model": case["model_name"],
                "task": case["task"],
                "setting": s.name,
                "source": s.source,
                "block_form": s.block_form if s.source == "project" else None,
                "channels_last": s.channels_last or s.optimize,
                "fold_bn": s.optimize,
                "amp": amp,
                "compile": s.compile,
                "batch": batch,
                "size": list(case["size"]),
                "clock": clock,
                "rounds": len(t),
                "times_s": t,
                "wall_times_s": times[s.name]["wall"],
                "cpu_times_s": times[s.name]["cpu"],
                "median_s": med,
                "q1_s": quantile(t, 0.25),
                "q3_s": quantile(t, 0.75),
                "min_s": min(t),
                "max_s": max(t),
                "ms_per_image": 1e3 * med / batch,
                "images_per_s": batch / med,
                "ratio_to_baseline": med / base,
                "ratio_spread": [min(t) / base, max(t) / base],
                "peak_memory_mib": measured["memory"][0],
                "memory_measure": measured["memory"][1],
                "gmacs_per_image": gmacs,
                "gmacs_measure": gmacs_note,
                "achieved_gmacs_per_s": achieved,
                "peak_dtype": peak_dtype,
                "fraction_of_peak": achieved / ref_peak["gmacs_per_s"] if ref_peak else None,
                "max_rel_err_vs_baseline": measured["error"],
                "onednn_1x1": s.onednn_1x1,
                "minor_faults_per_call": statistics.median(faults) if faults else None,
                "freed_memory": r.freed_memory,
                # The project's tools would keep freed memory; this variant's process did not.
                "lacks_process_setting": s.keeps_freed_memory and r.freed_memory != "kept",
            }
        )
    return records
