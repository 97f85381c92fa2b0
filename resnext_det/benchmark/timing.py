"""The timing loop: every variant of a (model, task) timed in interleaved rounds, with the
machine's peak measured in the same rounds and the load recorded around them."""

from __future__ import annotations

import statistics
import time

import torch

from ..env import machine_info
from ..speed import keep_freed_memory as keep_process_freed_memory
from ..speed import max_relative_error
from .measure import (
    PeakProbe,
    count_gmacs,
    load_average,
    minor_faults,
    peak_memory,
    quantile,
    quiet_verdict,
    sync,
)
from .settings import (
    BASELINE,
    DEFAULT_SETTINGS,
    SETTINGS,
    TASKS,
    BenchmarkInputError,
)
from .variants import (
    backbone_variant,
    bench_config,
    detector_inputs,
    detector_variant,
    realistic_norms,
)

__all__ = ["run_benchmark", "MIN_ROUNDS"]

# Fewer interleaved rounds than this and the report calls its figures indicative only.
MIN_ROUNDS = 5


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
    keep_freed_memory: bool = False,
    progress: bool = True,
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
        keep_freed_memory: first make this process keep freed memory
            (:func:`resnext_det.speed.keep_freed_memory`, what the project's trainer and CPU
            inference do): a process setting, so it holds for every variant of the run, the
            baseline included. Each record counts the minor page faults of its calls.
        progress: tqdm bars.

    Returns:
        a json-ready dict: ``machine``, ``config``, ``load_average_*``, ``quiet``, ``peak`` and
        ``results`` (one record per variant).

    Raises:
        BenchmarkInputError: an argument is not allowed (``.field`` names it).
    """
    from tqdm import tqdm

    dev = _check_arguments(tasks, settings, repeats, batch, size, clock, device)
    memory_kept = keep_process_freed_memory() if keep_freed_memory else False
    names = [BASELINE] + [s for s in settings if s != BASELINE]
    size = (int(size[0]), int(size[1]))
    records = []
    loads = [load_average()]
    peaks = {}
    for model_name in models:
        for task in tasks:
            torch.manual_seed(seed)
            cfg = bench_config(model_name, torch.device("cpu"), task)
            detector = task in ("train", "inference")
            if detector:
                from detectron2.modeling import build_model

                reference = realistic_norms(build_model(cfg), seed)
                inputs = detector_inputs(batch, size, torch.device("cpu"), seed)
            else:
                from detectron2.layers import ShapeSpec
                from detectron2.modeling.backbone.resnet import build_resnet_backbone

                reference = realistic_norms(build_resnet_backbone(cfg, ShapeSpec(channels=3)), seed)
                inputs = None
            gmacs, gmacs_note = count_gmacs(task, reference, size, inputs)
            cfg.MODEL.DEVICE = str(dev)
            reference.to(dev)
            if detector:
                inputs = detector_inputs(batch, size, dev, seed)
            else:
                x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
                x = x.to(dev)
            variants = []
            for name in names:
                setting = SETTINGS[name]
                if not setting.applies_to(task):
                    continue
                setting = setting.resolve(cfg)
                if setting is None:
                    continue
                if detector:
                    variants.append(detector_variant(setting, task, reference, cfg, inputs))
                else:
                    variants.append(backbone_variant(setting, task, reference, cfg, x))
            del reference
            label = f"{model_name} {task}"
            expected = None
            errors, memory = {}, {}
            for v in tqdm(variants, desc=f"{label}: warm-up", disable=not progress):
                for _ in range(warmup):
                    v.step()
                sync(dev)
                got = v.check()
                if expected is None:
                    expected = got
                errors[v.setting.name] = max_relative_error(got, expected)
                memory[v.setting.name] = peak_memory(dev, v.step)
            walls: dict[str, list[float]] = {v.setting.name: [] for v in variants}
            cpus: dict[str, list[float]] = {v.setting.name: [] for v in variants}
            faults: dict[str, list[int]] = {v.setting.name: [] for v in variants}
            group_probe = PeakProbe(dev, clock=clock) if peak else None
            if group_probe:
                group_probe.warmup()
            for _ in tqdm(range(repeats), desc=f"{label}: rounds", disable=not progress):
                if group_probe:
                    group_probe.round()
                for v in variants:
                    sync(dev)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    start_faults = minor_faults()
                    v.step()
                    sync(dev)
                    walls[v.setting.name].append(time.perf_counter() - start)
                    cpus[v.setting.name].append(time.process_time() - start_cpu)
                    if start_faults is not None:
                        faults[v.setting.name].append(minor_faults() - start_faults)
                loads.append(load_average())
            group_peak = group_probe.summary() if group_probe else {}
            peaks[label] = group_peak
            times = walls if clock == "wall" else cpus
            base = statistics.median(times[BASELINE])
            for v in variants:
                s, t = v.setting, times[v.setting.name]
                med = statistics.median(t)
                amp = s.amp_dtype(dev) or "float32"
                achieved = gmacs * batch / med
                ref_peak = group_peak.get(amp if amp in group_peak else "float32")
                records.append(
                    {
                        "model": model_name,
                        "task": task,
                        "setting": s.name,
                        "source": s.source,
                        "block_form": s.block_form if s.source == "project" else None,
                        "channels_last": s.channels_last or s.optimize,
                        "fold_bn": s.optimize,
                        "amp": amp,
                        "compile": s.compile,
                        "batch": batch,
                        "size": list(size),
                        "clock": clock,
                        "rounds": len(t),
                        "times_s": t,
                        "wall_times_s": walls[s.name],
                        "cpu_times_s": cpus[s.name],
                        "median_s": med,
                        "q1_s": quantile(t, 0.25),
                        "q3_s": quantile(t, 0.75),
                        "min_s": min(t),
                        "max_s": max(t),
                        "ms_per_image": 1e3 * med / batch,
                        "images_per_s": batch / med,
                        "ratio_to_baseline": med / base,
                        "ratio_spread": [min(t) / base, max(t) / base],
                        "peak_memory_mib": memory[s.name][0],
                        "memory_measure": memory[s.name][1],
                        "gmacs_per_image": gmacs,
                        "gmacs_measure": gmacs_note,
                        "achieved_gmacs_per_s": achieved,
                        "peak_dtype": amp if amp in group_peak else "float32",
                        "fraction_of_peak": achieved / ref_peak["gmacs_per_s"]
                        if ref_peak
                        else None,
                        "max_rel_err_vs_baseline": errors[s.name],
                        "minor_faults_per_call": statistics.median(faults[s.name])
                        if faults[s.name]
                        else None,
                        # The trainer would keep freed memory; this run did not (see config).
                        "lacks_process_setting": s.keeps_freed_memory and not memory_kept,
                    }
                )
            del variants
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    loads.append(load_average())
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
            "keep_freed_memory": keep_freed_memory,
            "freed_memory_kept": memory_kept,
        },
        "load_average_before": loads[0],
        "load_average_after": loads[-1],
        "load_average_samples": [v for v in loads if v],
        "quiet": quiet_verdict(loads, own_threads=torch.get_num_threads()),
        "enough_rounds": repeats >= MIN_ROUNDS,
        "peak": peaks,
        "results": records,
    }
