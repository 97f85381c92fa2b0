"""Benchmark: this project's settings against detectron2's built-in ResNet (and torchvision's).

The same inputs and weights for every setting, timed in interleaved rounds, for the backbone alone
(forward, backward) and for Faster R-CNN FPN (train, inference), with the machine's own peak and
load measured in the same run; the speed-ups themselves live in :mod:`resnext_det.speed`.
``tools/benchmark.py`` is the command line, ``docs/benchmarks.md`` the results.

* :mod:`.settings`: the models, tasks and settings compared;
* :mod:`.variants`: the model of each setting, built from the baseline's weights;
* :mod:`.measure`: memory, multiply-adds, the machine's peak, the load;
* :mod:`.timing`: the interleaved timing loop (:func:`run_benchmark`);
* :mod:`.process`: where variants run (here, or in a child process that keeps freed memory);
* :mod:`.report`: markdown, plot and files;
* :mod:`.training`: the demo's training under CPU settings (speed and loss curves).
"""

from .report import benchmark_markdown, plot_benchmark, write_benchmark
from .settings import (
    BASELINE,
    BENCH_MODELS,
    CPU_TRAIN_DEFAULTS,
    DEFAULT_SETTINGS,
    SETTINGS,
    TASKS,
    BenchmarkInputError,
    Setting,
)
from .timing import MEMORY_MODES, MIN_ROUNDS, run_benchmark

__all__ = [
    "BASELINE",
    "BENCH_MODELS",
    "CPU_TRAIN_DEFAULTS",
    "DEFAULT_SETTINGS",
    "MEMORY_MODES",
    "MIN_ROUNDS",
    "SETTINGS",
    "TASKS",
    "BenchmarkInputError",
    "Setting",
    "benchmark_markdown",
    "plot_benchmark",
    "run_benchmark",
    "write_benchmark",
]
