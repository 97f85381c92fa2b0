#!/usr/bin/env python
"""Which kernel is the machine's peak? A 2048^3 ``torch.matmul`` (MKL's sgemm for fp32) beside a
1x1 convolution of the same multiply-adds (1024 -> 1024 channels on two 64x64 maps: NCHW and
NHWC with the kernel PyTorch picks, and NHWC sent to oneDNN), per dtype and thread count, with
the error of each fp32 result against float64. The benchmark's ``PeakProbe`` times the matmul and
the oneDNN NHWC convolution in every round and divides by the faster; this study adds NCHW,
several thread counts and the accuracy check, which is what showed that the matmul alone
understates the peak on Zen 4/5 (1.5-2x) and that on one thread PyTorch keeps 1x1 convolutions
from oneDNN.

    python tools/peak_check.py [--threads 1 2] [--repeats 7] [--output docs/benchmarks/peak_check]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.measure import load_average, one_thread_onednn_1x1, quiet_verdict  # noqa: E402
from resnext_det.env import machine_info  # noqa: E402
from resnext_det.io import write_json_atomic  # noqa: E402
from resnext_det.speed import ONEDNN_1X1_DILATION  # noqa: E402

MACS = 2048**3  # = 1024 * 1024 * 64 * 64 * 2: the same work both ways


def _gmacs(fn, *args, repeats: int) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return MACS / statistics.median(times) / 1e9


def _onednn_dilation(threads: int) -> tuple[int, int]:
    """The dilation that sends a 1x1 convolution to oneDNN on ``threads`` threads, as the
    project's commands do: ONEDNN_1X1_DILATION on one thread, where PyTorch's own rule would
    not use oneDNN; (1, 1) on more, where it does anyway."""
    return ONEDNN_1X1_DILATION if one_thread_onednn_1x1(torch.device("cpu"), threads) else (1, 1)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--output", help="write OUTPUT.json")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    before = load_average()
    rows = []
    for threads in a.threads:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            m1, m2 = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
            # 1024 x 1024 x 4096 pixels x 2 images = 2048^3 multiply-adds.
            x = torch.randn(2, 1024, 64, 64, dtype=dtype)
            w = torch.randn(1024, 1024, 1, 1, dtype=dtype)
            x_nhwc = x.contiguous(memory_format=torch.channels_last)
            w_nhwc = w.contiguous(memory_format=torch.channels_last)
            row = {
                "threads": threads,
                "dtype": str(dtype).replace("torch.", ""),
                "matmul_gmacs_per_s": _gmacs(torch.matmul, m1, m2, repeats=a.repeats),
                "conv1x1_nchw_gmacs_per_s": _gmacs(F.conv2d, x, w, repeats=a.repeats),
                "conv1x1_nhwc_gmacs_per_s": _gmacs(F.conv2d, x_nhwc, w_nhwc, repeats=a.repeats),
                # dilation (2, 2) on one thread: oneDNN, which PyTorch's rule replaces by MKL's
                # sgemm there (resnext_det.speed.onednn_1x1_convolutions); the same otherwise.
                "conv1x1_nhwc_onednn_gmacs_per_s": _gmacs(
                    functools.partial(F.conv2d, dilation=_onednn_dilation(threads)),
                    x_nhwc,
                    w_nhwc,
                    repeats=a.repeats,
                ),
            }
            if dtype == torch.float32:
                row["matmul_rel_err_vs_float64"] = _rel_err(m1 @ m2, m1.double() @ m2.double())
                row["conv1x1_nhwc_rel_err_vs_float64"] = _rel_err(
                    F.conv2d(x_nhwc, w_nhwc), F.conv2d(x.double(), w.double())
                )
            rows.append(row)
            print(json.dumps({k: float(f"{v:.3g}") if isinstance(v, float) else v
                              for k, v in row.items()}))  # fmt: skip
    loads = [before, load_average()]
    rep = {
        "machine": machine_info(),
        "macs": MACS,
        "repeats": a.repeats,
        "results": rows,
        "load_average_before": loads[0],
        "load_average_after": loads[1],
        "quiet": quiet_verdict(loads, own_threads=max(a.threads)),
        "command": "python tools/peak_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(json.dumps({"load": loads, "quiet": rep["quiet"]["quiet"]}))
    if a.output:
        write_json_atomic(f"{a.output}.json", rep, indent=1)
    return rep


if __name__ == "__main__":
    main()
