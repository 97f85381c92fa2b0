"""What the timing loop measures besides time: memory, multiply-adds, the machine's own peak
(a large matrix product in fp32 and bf16 on the same threads) and how loaded the machine was."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "sync",
    "peak_memory",
    "quantile",
    "load_average",
    "quiet_verdict",
    "count_gmacs",
    "PeakProbe",
    "QUIET_LOAD_PER_CORE",
]

# A run is called quiet only if the 1-minute load average stayed at or below this per core.
QUIET_LOAD_PER_CORE = 0.5


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device, fn: Callable[[], object]) -> tuple[float | None, str]:
    """Peak memory of one call of ``fn`` in MiB above what was allocated before, and how it was
    measured."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_allocated"
    # CPU: torch keeps no allocator statistics and the process's RSS high-water mark does not see
    # a call that reuses pages freed (but kept by malloc) in an earlier one, so replay the
    # profiler's allocation and free events in time order and take the running total's maximum.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    total = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        total += event.self_cpu_memory_usage  # "[memory]" events are frees outside any op
        peak = max(peak, total)
    return peak / 2**20, "cpu_profiler_allocations"


def quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def count_gmacs(task: str, reference: nn.Module, size: tuple[int, int], inputs: list | None):
    """Multiply-adds per image (fvcore counts one multiply-add as one flop), and what they are."""
    if task in ("forward", "backward"):
        from ..complexity import count_complexity

        gmacs = count_complexity(reference, size).gflops
        if task == "backward":
            # The usual convention: the backward pass costs twice the forward (grads of inputs
            # and of weights).
            return 3 * gmacs, "3x forward (count_complexity)"
        return gmacs, "count_complexity"
    # detectron2.utils.analysis.FlopCountAnalysis would do this, but importing it needs caffe2
    # (detectron2.export); a wrapper from one image tensor to the raw detections serves fvcore.
    from fvcore.nn import FlopCountAnalysis

    class _ImageToDetections(nn.Module):
        def __init__(self, detector: nn.Module):
            super().__init__()
            self.detector = detector

        def forward(self, image: torch.Tensor):
            out = self.detector.inference([{"image": image}], do_postprocess=False)[0]
            return out.pred_boxes.tensor, out.scores

    was_training = reference.training
    reference.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(_ImageToDetections(reference), inputs[0]["image"].cpu())
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            # As count_complexity: convolutions and fully connected layers (RoI heads included).
            ops = analysis.by_operator()
            gmacs = sum(ops.get(k, 0) for k in ("conv", "linear", "addmm", "matmul")) / 1e9
    finally:
        reference.train(was_training)
    if task == "train":
        return 3 * gmacs, "3x inference forward (fvcore)"
    return gmacs, "inference forward (fvcore)"


def quiet_verdict(
    loads: list[list[float] | None], cores: int | None = None, own_threads: int = 0
) -> dict:
    """Whether the machine was quiet: the 1-minute load average before the run at most
    :data:`QUIET_LOAD_PER_CORE` per core, and every later sample (during, after) at most that
    plus the run's own ``own_threads`` (a 2-thread benchmark on 2 cores loads them to 2 by
    itself; counting that as "other processes" would call every full-machine run loaded)."""
    cores = cores or os.cpu_count() or 1
    base = QUIET_LOAD_PER_CORE * cores
    first, later = (loads[0] if loads else None), [v[0] for v in loads[1:] if v]
    quiet = first is not None and first[0] <= base and all(v <= base + own_threads for v in later)
    seen = ([first[0]] if first else []) + later
    return {
        "quiet": quiet,
        "max_load_1min": max(seen) if seen else None,
        "cores": cores,
        "limit": base,
        "own_threads": own_threads,
    }


class PeakProbe:
    """The machine's peak in GMAC/s, measured like any variant: one ``n x n`` matrix product
    per dtype per round, on the threads the benchmark runs with.

    A matrix product of this size is the fastest thing the BLAS / oneDNN kernels do, so it is
    the practical ceiling a convolution network could reach on these threads and this device.
    """

    def __init__(
        self,
        device: torch.device,
        n: int = 2048,
        dtypes=("float32", "bfloat16"),
        clock: str = "wall",
    ):
        g = torch.Generator().manual_seed(0)
        # The same clock as the figures it is compared with.
        self.clock = (
            time.perf_counter if clock == "wall" or device.type == "cuda" else time.process_time
        )
        self.device, self.n = device, n
        base = torch.randn(n, n, generator=g)
        self.pairs = {d: (base.to(device, getattr(torch, d)),) * 2 for d in dtypes}
        self.times: dict[str, list[float]] = {d: [] for d in dtypes}

    def warmup(self) -> None:
        for a, b in self.pairs.values():
            torch.mm(a, b)
        sync(self.device)

    def round(self) -> None:
        """Time one product of each dtype."""
        for d, (a, b) in self.pairs.items():
            sync(self.device)
            start = self.clock()
            torch.mm(a, b)
            sync(self.device)
            self.times[d].append(self.clock() - start)

    def summary(self) -> dict[str, dict]:
        import statistics

        out = {}
        for d, t in self.times.items():
            if not t:
                continue
            gmacs = self.n**3 / 1e9
            out[d] = {
                "matmul_n": self.n,
                "times_s": t,
                "gmacs_per_s": gmacs / statistics.median(t),
                "spread_gmacs_per_s": [gmacs / max(t), gmacs / min(t)],
            }
        return out
