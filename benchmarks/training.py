"""Training speed and training outcome of the demo's detectors under different CPU settings.

Two measurements, both against fp32 channels-first in the same run:

* :func:`time_training_settings`: several trainers (one per setting: channels_last, bf16
  autocast, thread count, data-loader workers) built in one process on the same data and the
  same initial weights, stepped in interleaved chunks (A B C A B C ...) so that load from other
  processes falls on all of them alike; seconds per iteration of each.
* :func:`time_parallel_runs`: ``n`` training runs one after another with all threads each
  against the same runs side by side with one thread each (separate processes), interleaved.

:func:`loss_curves` trains the same seeds with each setting for a few hundred iterations and
returns the loss curves, for the "same outcome as fp32" comparison.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode

_REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "TrainSetting",
    "TRAIN_SETTINGS",
    "configure_training_process",
    "demo_train_config",
    "time_training_settings",
    "time_parallel_runs",
    "train_net_command",
    "train_and_evaluate",
    "loss_curves",
]


@dataclass(frozen=True)
class TrainSetting:
    """How a CPU training run executes (not what it trains): see :mod:`resnext_det.speed`."""

    name: str
    channels_last: bool = False
    amp_dtype: str = ""  # "" (fp32) or "bfloat16"
    threads: int = 0  # 0: torch's default (one per core)
    num_workers: int = 0
    onednn_1x1: bool = False  # CPU_TRAINING.ONEDNN_1X1 (applied with NUM_THREADS 1 only)

    def apply(self, cfg: CfgNode) -> CfgNode:
        """A copy of ``cfg`` that trains with this setting (``CPU_TRAINING`` keys)."""
        cfg = cfg.clone()
        cfg.defrost()
        t = cfg.CPU_TRAINING
        t.ENABLED = True
        t.CHANNELS_LAST = self.channels_last
        t.AMP_DTYPE = self.amp_dtype
        t.NUM_THREADS = self.threads
        t.ONEDNN_1X1 = self.onednn_1x1
        cfg.DATALOADER.NUM_WORKERS = self.num_workers
        return cfg


TRAIN_SETTINGS: dict[str, TrainSetting] = {
    s.name: s
    for s in (
        TrainSetting("fp32"),
        TrainSetting("channels_last", channels_last=True),
        TrainSetting("bf16", amp_dtype="bfloat16"),
        # fp32 with the other CPU_TRAINING defaults: what a CPU without native bf16 trains with.
        TrainSetting("channels_last+onednn_1x1", channels_last=True, onednn_1x1=True),
        # The CPU_TRAINING defaults.
        TrainSetting(
            "channels_last+bf16", channels_last=True, amp_dtype="bfloat16", onednn_1x1=True
        ),
        TrainSetting("fp32+1thread", threads=1),
        TrainSetting("fp32+workers1", num_workers=1),
    )
}


def demo_train_config(
    config_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    max_iter: int | None = None,
    ims_per_batch: int | None = None,
    seed: int = 0,
) -> CfgNode:
    """A demo config (``configs/demo/*.yaml``) writing to ``out_dir``, with no evaluation."""
    from resnext_det.config import load_config

    cfg = load_config(config_file)
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.DATASETS.TEST = ()
    cfg.SEED = seed
    if ims_per_batch is not None:
        cfg.SOLVER.IMS_PER_BATCH = ims_per_batch
    if max_iter is not None:
        scale = max_iter / cfg.SOLVER.MAX_ITER
        cfg.SOLVER.STEPS = tuple(max(1, round(s * scale)) for s in cfg.SOLVER.STEPS)
        # The warm-up stays as long as the config's: shortened, the demo at lr 0.02 diverges.
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max_iter // 2)
        cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9  # no checkpoints but the final one
    return cfg


def configure_training_process(cfg: CfgNode) -> None:
    """The process part of ``cfg.CPU_TRAINING`` (threads, freed memory kept), set as the
    project's training command sets it before it builds its trainer (the trainer itself changes
    only its model); nothing off the CPU or with ``CPU_TRAINING.ENABLED`` False."""
    from resnext_det.runtime import configure_process
    from resnext_det.speed import cpu_training_settings

    s = cpu_training_settings(cfg)
    if s is not None:
        configure_process(num_threads=s.num_threads, keep_freed_memory=s.keep_freed_memory)


class _SteppedTrainer:
    """A :class:`~resnext_det.training.Trainer` advanced a chunk of iterations at a time, in a
    process set up as the training command sets its own (:func:`configure_training_process`);
    its thread count is set again before every chunk (the trainers of one run share the
    process)."""

    def __init__(self, cfg: CfgNode):
        from detectron2.utils.events import EventStorage

        from resnext_det.training import Trainer

        self.cfg = cfg
        cfg.freeze()
        configure_training_process(cfg)
        self.threads = torch.get_num_threads()
        self.trainer = Trainer(cfg)  # applies the model part of cfg.CPU_TRAINING
        self.trainer.resume_or_load(resume=False)
        self.trainer.iter = self.trainer.start_iter = 0
        self.storage = EventStorage(0)
        self.trainer.storage = self.storage
        self.losses: list[float] = []
        self.data_times: list[float] = []
        self.step_times: list[float] = []
        self.hook_times: list[float] = []
        self.cpu_times: list[float] = []
        with self.storage:
            self.trainer.before_train()

    def step(self, n: int) -> list[float]:
        t = self.trainer
        times = []
        torch.set_num_threads(self.threads)
        with self.storage:
            for _ in range(n):
                start, start_cpu = time.perf_counter(), time.process_time()
                t.before_step()
                mid = time.perf_counter()
                t.run_step()
                end_step = time.perf_counter()
                t.after_step()
                times.append(time.perf_counter() - start)
                self.hook_times.append(times[-1] - (end_step - mid))
                self.cpu_times.append(time.process_time() - start_cpu)
                self.step_times.append(times[-1])
                latest = self.storage.latest()
                self.losses.append(float(latest["total_loss"][0]))
                self.data_times.append(float(latest["data_time"][0]))
                t.iter += 1
                self.storage.iter = t.iter
        return times


def time_training_settings(
    config_file: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    settings: list[str] | tuple[str, ...] = ("fp32", "channels_last", "bf16", "channels_last+bf16"),
    rounds: int = 5,
    iters_per_round: int = 10,
    warmup: int = 3,
    ims_per_batch: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Seconds per training iteration of the demo under each setting, interleaved.

    ``threads`` overrides every setting's thread count. With one thread, the process CPU time
    per iteration (recorded beside the wall time) is what the iteration takes on a quiet core.

    Every trainer starts from the same seed (weights and data order), so all do the same work
    while their weights stay close; ``rounds`` rounds of ``iters_per_round`` iterations each.
    """
    from resnext_det.data import make_synthetic_coco

    unknown = [s for s in settings if s not in TRAIN_SETTINGS]
    if unknown:
        raise ValueError(f"unknown training settings {unknown}; known: {list(TRAIN_SETTINGS)}")
    make_synthetic_coco(data_dir).register("synthetic")
    default_threads = torch.get_num_threads()
    total = warmup + rounds * iters_per_round
    trainers = {}
    for name in settings:
        cfg = demo_train_config(
            config_file,
            Path(out_dir) / name,
            max_iter=total + 1,
            ims_per_batch=ims_per_batch,
            seed=seed,
        )
        setting = TRAIN_SETTINGS[name]
        if threads is not None:
            setting = replace(setting, threads=threads)
        trainers[name] = _SteppedTrainer(setting.apply(cfg))
    torch.set_num_threads(default_threads)
    for tr in trainers.values():
        tr.step(warmup)
    per_iter: dict[str, list[float]] = {n: [] for n in trainers}
    cpu_per_iter: dict[str, list[float]] = {n: [] for n in trainers}
    for _ in range(rounds):
        for name, tr in trainers.items():
            per_iter[name].append(statistics.median(tr.step(iters_per_round)))
            cpu_per_iter[name].append(statistics.median(tr.cpu_times[-iters_per_round:]))
    base = statistics.median(per_iter[settings[0]])
    cpu_base = statistics.median(cpu_per_iter[settings[0]])
    results = []
    for name, tr in trainers.items():
        med = statistics.median(per_iter[name])
        results.append(
            {
                "setting": name,
                **{k: v for k, v in vars(TRAIN_SETTINGS[name]).items() if k != "name"},
                "threads_used": tr.threads,
                "s_per_iter_rounds": per_iter[name],
                "s_per_iter_median": med,
                "spread": [min(per_iter[name]), max(per_iter[name])],
                "ratio_to_first": med / base,
                "cpu_s_per_iter_rounds": cpu_per_iter[name],
                "cpu_s_per_iter_median": statistics.median(cpu_per_iter[name]),
                "cpu_ratio_to_first": statistics.median(cpu_per_iter[name]) / cpu_base,
                "data_time_share": sum(tr.data_times[warmup:]) / sum(tr.step_times[warmup:]),
                "hook_time_share": sum(tr.hook_times[warmup:]) / sum(tr.step_times[warmup:]),
                "losses": tr.losses,
            }
        )
    return {"config_file": str(config_file), "results": results}


def _schedule_opts(cfg: CfgNode) -> list[str]:
    s = cfg.SOLVER
    return [
        "SOLVER.MAX_ITER", str(s.MAX_ITER), "SOLVER.STEPS", str(tuple(s.STEPS)),
        "SOLVER.WARMUP_ITERS", str(s.WARMUP_ITERS), "SOLVER.IMS_PER_BATCH", str(s.IMS_PER_BATCH),
        "SOLVER.CHECKPOINT_PERIOD", str(s.CHECKPOINT_PERIOD),
    ]  # fmt: skip


def train_net_command(
    config_file: str | os.PathLike,
    data,
    out_dir: str | os.PathLike,
    *,
    threads: int,
    max_iter: int | None = None,
    ims_per_batch: int | None = None,
    seed: int = 0,
    cpu_training: bool = True,
) -> list[str]:
    """The ``tools/train_net.py`` command of one demo training run on the generated set
    ``data`` (a :class:`~resnext_det.data.SyntheticCOCO`), with ``CPU_TRAINING.NUM_THREADS
    threads`` (1 for runs side by side); ``cpu_training=False``: detectron2's own settings
    (fp32, NCHW, torch's thread count), what the first version trained with."""
    cfg = demo_train_config(
        config_file, out_dir, max_iter=max_iter, ims_per_batch=ims_per_batch, seed=seed
    )
    return [
        sys.executable, str(_REPO / "tools" / "train_net.py"), "--config-file", str(config_file),
        "--register", "synthetic_train", str(data.train_json), str(data.train_image_root),
        "--register", "synthetic_val", str(data.val_json), str(data.val_image_root),
        "OUTPUT_DIR", str(out_dir), "DATASETS.TEST", "()", "SEED", str(seed),
        "CPU_TRAINING.NUM_THREADS", str(threads), "CPU_TRAINING.ENABLED", str(cpu_training),
        *_schedule_opts(cfg),
    ]  # fmt: skip


def _run_processes(commands: list[list[str]], env: dict[str, str]) -> tuple[float, float]:
    """Run ``commands`` side by side; (wall seconds, CPU seconds of the children)."""
    import resource

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    start, start_cpu = time.perf_counter(), children_cpu()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"training subprocess failed ({p.returncode}): {p.args}")
    return time.perf_counter() - start, children_cpu() - start_cpu


def time_parallel_runs(
    config_file: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    runs: int = 2,
    max_iter: int = 30,
    rounds: int = 3,
    ims_per_batch: int | None = None,
) -> dict[str, Any]:
    """Wall time of ``runs`` trainings of ``max_iter`` iterations, interleaved over ``rounds``,
    each run a fresh process (its start-up included), three ways: "first_version", one after
    another with detectron2's settings (fp32 NCHW, all cores' threads), as the first version's
    demo trained; "sequential", one after another with the ``CPU_TRAINING`` defaults on all
    cores; "parallel", side by side with the defaults and one thread each (what the demo does).
    ``parallel_over_first_version`` is the time per run now against then."""
    from resnext_det.data import make_synthetic_coco

    data = make_synthetic_coco(data_dir)
    cores = os.cpu_count() or 1
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    modes = {  # mode: (threads per run, CPU_TRAINING defaults, side by side)
        "first_version": (cores, False, False),
        "sequential": (cores, True, False),
        "parallel": (1, True, True),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode, (threads, defaults, side_by_side) in modes.items():
            cmds = [
                train_net_command(
                    config_file,
                    data,
                    Path(out_dir) / f"{mode}_{r}_{k}",
                    threads=threads,
                    max_iter=max_iter,
                    ims_per_batch=ims_per_batch,
                    seed=k,
                    cpu_training=defaults,
                )
                for k in range(runs)
            ]
            if side_by_side:
                done = [_run_processes(cmds, env)]
            else:
                done = [_run_processes([c], env) for c in cmds]
            times[mode].append(sum(w for w, _ in done))
            cpu[mode].append(sum(c for _, c in done))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "runs": runs,
        "max_iter": max_iter,
        "cores": cores,
        "seconds": times,
        "cpu_seconds": cpu,
        "median_s": med,
        "cpu_median_s": {k: statistics.median(v) for k, v in cpu.items()},
        "seconds_per_run": {k: v / runs for k, v in med.items()},
        "parallel_over_sequential": med["parallel"] / med["sequential"],
        "parallel_over_first_version": med["parallel"] / med["first_version"],
    }


def loss_curves(
    config_file: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    settings: list[str] | tuple[str, ...] = ("fp32", "channels_last+bf16"),
    seeds: list[int] | tuple[int, ...] = (0, 1),
    max_iter: int = 300,
    ims_per_batch: int | None = None,
) -> dict[str, Any]:
    """Training loss of every (setting, seed) over ``max_iter`` iterations of the demo schedule
    compressed to ``max_iter``; the trainers are interleaved, 10 iterations at a time."""
    from resnext_det.data import make_synthetic_coco

    make_synthetic_coco(data_dir).register("synthetic")
    trainers = {}
    for name in settings:
        for seed in seeds:
            cfg = demo_train_config(
                config_file,
                Path(out_dir) / f"{name}_s{seed}",
                max_iter=max_iter,
                ims_per_batch=ims_per_batch,
                seed=seed,
            )
            trainers[(name, seed)] = _SteppedTrainer(TRAIN_SETTINGS[name].apply(cfg))
    done = 0
    while done < max_iter:
        n = min(10, max_iter - done)
        for tr in trainers.values():
            tr.step(n)
        done += n
    return {
        "config_file": str(config_file),
        "max_iter": max_iter,
        "curves": [
            {"setting": name, "seed": seed, "losses": tr.losses}
            for (name, seed), tr in trainers.items()
        ],
    }


def train_and_evaluate(
    config_file: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    setting: str = "channels_last+bf16",
    max_iter: int | None = None,
    ims_per_batch: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """One demo training run with ``setting`` (``threads`` overriding its thread count), then
    COCO AP on the generated val split."""
    from resnext_det.data import make_synthetic_coco
    from resnext_det.training import Trainer

    make_synthetic_coco(data_dir).register("synthetic")
    cfg = demo_train_config(
        config_file, out_dir, max_iter=max_iter, ims_per_batch=ims_per_batch, seed=seed
    )
    chosen = TRAIN_SETTINGS[setting]
    cfg = (chosen if threads is None else replace(chosen, threads=threads)).apply(cfg)
    cfg.DATASETS.TEST = ("synthetic_val",)
    cfg.freeze()
    start, start_cpu = time.perf_counter(), time.process_time()
    configure_training_process(cfg)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = (
        trainer._last_eval_results
    )  # DefaultTrainer.train returns it only with EXPECTED_RESULTS
    return {
        "config_file": str(config_file),
        "setting": setting,
        "seed": seed,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - start_cpu,
        "bbox": dict(results["bbox"]),
        "total_loss": [v for v, _ in trainer.storage.history("total_loss").values()],
    }
