"""What the timing loop measures besides time: memory, multiply-adds, the machine's own peak
(the faster of a large matrix product and a 1x1 convolution, in fp32 and bf16 on the same
threads) and how loaded the machine was."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from resnext_det.speed import ONEDNN_1X1_DILATION

__all__ = [
    "sync",
    "one_thread_onednn_1x1",
    "profiler_lines_hidden",
    "peak_memory",
    "quantile",
    "load_average",
    "minor_faults",
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


def one_thread_onednn_1x1(device: torch.device, threads: int | None = None) -> bool:
    """Whether the project's commands would send stride-1 1x1 convolutions to oneDNN here
    (:func:`resnext_det.speed.onednn_1x1_convolutions`): on the CPU, in a process of one thread
    (``threads``, default this process's), where PyTorch's own rule picks a 2x slower kernel."""
    threads = torch.get_num_threads() if threads is None else threads
    return torch.device(device).type == "cpu" and threads == 1


# A line of Kineto, torch.profiler's C++ side, which writes to fd 2 itself, even when only CPU
# activities are profiled: "USDT:2026-12-04 14:59:18 5203:5203 SyncActivityProfilerHandler.cpp:39]
# profiler_start" and, on a machine without CUDA, "ERROR:... DeviceProperties.cpp:56]
# gpuGetDeviceCount failed with code 35".
_PROFILER_LINE = re.compile(rb"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ [\w.]+\.cpp:\d+\] ")


@contextlib.contextmanager
def profiler_lines_hidden(hidden: bool = True) -> Iterator[None]:
    """Inside the block, keep the profiler's own lines (:data:`_PROFILER_LINE`) off fd 2; every
    other line written to fd 2 meanwhile is passed on when the block ends. A no-op unless
    ``hidden`` (the benchmark's ``verbose`` shows them)."""
    if not hidden:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().splitlines(keepends=True)
            rest = [ln for ln in lines if not _PROFILER_LINE.match(ln)]
            if rest:
                os.write(2, b"".join(rest))


def peak_memory(
    device: torch.device, fn: Callable[[], object], verbose: bool = False
) -> tuple[float | None, str]:
    """Peak memory of one call of ``fn`` in MiB above what was allocated before, and how it was
    measured. On the CPU the profiler's own console lines are shown only if ``verbose``."""
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

    with profiler_lines_hidden(not verbose):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = prof.events()
    total = peak = 0
    for event in sorted(events, key=lambda e: e.time_range.start):
        total += event.self_cpu_memory_usage  # "[memory]" events are frees outside any op
        peak = max(peak, total)
    return peak / 2**20, "cpu_profiler_allocations"


def quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def minor_faults() -> int | None:
    """This process's minor page faults so far (pages the kernel mapped in on first touch);
    None where ``resource`` is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def count_gmacs(task: str, reference: nn.Module, size: tuple[int, int], inputs: list | None):
    """Multiply-adds per image (fvcore counts one multiply-add as one flop), and what they are."""
    if task in ("forward", "backward"):
        from resnext_det.complexity import count_complexity

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
    """The machine's peak in GMAC/s, measured like any variant: per dtype per round, the same
    ``n^3`` multiply-adds once as an ``n x n`` matrix product and once as a channels-last 1x1
    convolution (``n/2`` -> ``n/2`` channels, 2 images of ``2n`` pixels), on the threads the
    benchmark runs with; the peak is the faster kernel's median.

    Why both: a large matrix product is the fastest thing a BLAS does, but torch sends fp32
    ``mm`` to MKL and convolutions to oneDNN, and on some CPUs (2-thread AMD Zen 4/5,
    ``tools/peak_check.py``) oneDNN's channels-last 1x1 kernel runs 1.5-2x faster than MKL's
    sgemm. A network's convolutions can reach the faster one, so dividing by the slower would
    overstate every "of peak". Still a measured lower bound of the hardware's peak, not its
    specification.
    """

    KERNELS = ("matmul", "conv1x1_nhwc")

    def __init__(
        self,
        device: torch.device,
        n: int = 2048,
        dtypes=("float32", "bfloat16"),
        clock: str = "wall",
    ):
        if n < 4 or n & (n - 1):
            raise ValueError(f"PeakProbe: n must be a power of two >= 4, got {n}")
        g = torch.Generator().manual_seed(0)
        # The same clock as the figures it is compared with.
        self.clock = (
            time.perf_counter if clock == "wall" or device.type == "cuda" else time.process_time
        )
        self.device, self.n = device, n
        # 2n pixels as an h x w map with h, w powers of two (2048: 64 x 64).
        h = 2 ** ((2 * n).bit_length() // 2)
        self.conv_shape = (2, n // 2, h, 2 * n // h)
        base = torch.randn(n, n, generator=g)
        image = torch.randn(*self.conv_shape, generator=g)
        weight = torch.randn(n // 2, n // 2, 1, 1, generator=g)
        cl = torch.channels_last
        # oneDNN's kernel on one CPU thread too, where PyTorch's own rule would pick MKL's sgemm
        # (as the project's models do there: speed.onednn_1x1_convolutions).
        dilation = ONEDNN_1X1_DILATION if one_thread_onednn_1x1(device) else (1, 1)
        self.calls: dict[str, dict[str, tuple]] = {}
        for d in dtypes:
            dt = getattr(torch, d)
            a = base.to(device, dt)
            x = image.to(device, dt).contiguous(memory_format=cl)
            w = weight.to(device, dt).contiguous(memory_format=cl)
            conv = functools.partial(F.conv2d, dilation=dilation)
            self.calls[d] = {"matmul": (torch.mm, a, a), "conv1x1_nhwc": (conv, x, w)}
        self.times = {d: {k: [] for k in self.KERNELS} for d in dtypes}

    def warmup(self) -> None:
        for kernels in self.calls.values():
            for fn, *args in kernels.values():
                fn(*args)
        sync(self.device)

    def round(self) -> None:
        """Time each kernel of each dtype once."""
        for d, kernels in self.calls.items():
            for k, (fn, *args) in kernels.items():
                sync(self.device)
                start = self.clock()
                fn(*args)
                sync(self.device)
                self.times[d][k].append(self.clock() - start)

    def summary(self) -> dict[str, dict]:
        """Per dtype: ``gmacs_per_s`` (the peak: the faster kernel's median), ``kernel`` (which),
        its ``times_s`` and ``spread_gmacs_per_s``, and every kernel's own figures."""
        import statistics

        gmacs = self.n**3 / 1e9
        out = {}
        for d, by_kernel in self.times.items():
            if not by_kernel["matmul"]:
                continue
            kernels = {
                k: {
                    "times_s": t,
                    "gmacs_per_s": gmacs / statistics.median(t),
                    "spread_gmacs_per_s": [gmacs / max(t), gmacs / min(t)],
                }
                for k, t in by_kernel.items()
            }
            best = max(kernels, key=lambda k: kernels[k]["gmacs_per_s"])
            out[d] = {
                "n": self.n,
                "conv_shape": list(self.conv_shape),
                "kernel": best,
                **kernels[best],
                "kernels": kernels,
            }
        return out
