"""Benchmark: this project's settings against detectron2's built-in ResNet (and torchvision's).

Developer tooling of the checkout, not part of the ``resnext_det`` wheel (as detectron2 keeps its
``tools/``): it times the speed-ups of :mod:`resnext_det.speed`, and it owns processes to do so
(thread counts, the allocator, child processes started with each side's settings), which a
library must leave to its user. The same inputs and weights for every setting, timed in
interleaved rounds, for the backbone alone (forward, backward) and for Faster R-CNN FPN (train,
inference), with the machine's own peak and load measured in the same run.
``tools/benchmark.py`` is the command line, ``docs/benchmarks.md`` the results; import it from a
checkout (the tools put its root on ``sys.path``).

* :mod:`.settings`: the models, tasks and settings compared;
* :mod:`.variants`: the model of each setting, built from the baseline's weights;
* :mod:`.measure`: memory, multiply-adds, the machine's peak, the load;
* :mod:`.timing`: the interleaved timing loop (:func:`run_benchmark`);
* :mod:`.process`: where variants run (here, or in a child process started with the allocator
  setting of their side's tools);
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
