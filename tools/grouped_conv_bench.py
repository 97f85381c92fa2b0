#!/usr/bin/env python
"""The grouped 3x3 convolution of ResNeXt's blocks, computed every way we know on the CPU.

The remaining cost after BN folding (docs/benchmarks.md): each stage's 3x3 conv with C groups of
width d, timed in interleaved rounds against PyTorch's default (NCHW, oneDNN), outputs compared
in fp32. Ways tried:

* ``nchw``: ``F.conv2d(groups=C)`` in NCHW (the baseline; what detectron2 runs);
* ``nhwc``: the same in channels_last (what ``optimize_for_inference`` runs);
* ``mkldnn``: oneDNN's blocked layout with the weights prepacked (``torch.utils.mkldnn``);
* ``nhwc_via_nchw``: in a channels_last network, this one conv in NCHW (both conversions timed);
* ``native``: oneDNN disabled (``torch.backends.mkldnn.flags(enabled=False)``): ATen's own kernel;
* ``bmm``: the C paths as one batched matrix product: im2col (``F.unfold``) then ``C`` products of
  ``(d_out x 9d) @ (9d x HW)`` in one ``torch.matmul``;
* ``compile``: ``torch.compile`` (inductor) of the NHWC conv (``--compile``; minutes to compile).

Times are the process's CPU time per call (``time.process_time``, several calls per round), which
with one thread is the time the call takes on a quiet core and is the least disturbed by other
jobs on a shared machine; wall-clock medians are kept in the json.

Example::

    python tools/grouped_conv_bench.py --size 512 640 --threads 1 --repeats 7 \\
        --output docs/benchmarks/cpu_grouped_conv
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import load_average, quiet_verdict  # noqa: E402
from resnext_det.io import write_json_atomic  # noqa: E402
from resnext_det.speed import max_relative_error  # noqa: E402

# X-50-32x4d's grouped convs: stage -> (channels, groups, stride of the feature map).
STAGES = {"res2": (128, 32, 4), "res3": (256, 32, 8), "res4": (512, 32, 16), "res5": (1024, 32, 32)}


def _bmm_conv(x: torch.Tensor, w: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, wd = x.shape
    cout = w.shape[0]
    cols = F.unfold(x, 3, padding=1)  # n, c*9, h*w   (channel-major: group g is a slice)
    cols = cols.view(n, groups, (c // groups) * 9, h * wd)
    wg = w.view(groups, cout // groups, (c // groups) * 9)
    out = torch.matmul(wg, cols)  # n, groups, cout/groups, h*w
    return out.view(n, cout, h, wd)


def _variants(x: torch.Tensor, w: torch.Tensor, groups: int, compile_: bool) -> dict:
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_cl = w.contiguous(memory_format=torch.channels_last)
    out = {
        "nchw": lambda: F.conv2d(x, w, padding=1, groups=groups),
        "nhwc": lambda: F.conv2d(x_cl, w_cl, padding=1, groups=groups),
    }

    def nhwc_via_nchw():
        # In a channels_last network: convert in, convolve in NCHW, convert back.
        y = F.conv2d(x_cl.contiguous(), w, padding=1, groups=groups)
        return y.contiguous(memory_format=torch.channels_last)

    out["nhwc_via_nchw"] = nhwc_via_nchw

    def native():
        with torch.backends.mkldnn.flags(enabled=False):
            return F.conv2d(x, w, padding=1, groups=groups)

    out["native"] = native
    conv = torch.nn.Conv2d(w.shape[1] * groups, w.shape[0], 3, padding=1, groups=groups, bias=False)
    conv.weight.data.copy_(w)
    try:
        from torch.utils import mkldnn as mkldnn_utils

        packed = mkldnn_utils.to_mkldnn(conv.eval())
        x_mk = x.to_mkldnn()
        out["mkldnn"] = lambda: packed(x_mk).to_dense()
    except (RuntimeError, AttributeError) as exc:  # torch built without the mkldnn tensor type
        print(f"mkldnn layout unavailable: {exc}")
    out["bmm"] = lambda: _bmm_conv(x, w, groups)
    if compile_:
        cl = torch.compile(lambda a: F.conv2d(a, w_cl, padding=1, groups=groups))
        out["compile"] = lambda: cl(x_cl)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", nargs=2, type=int, default=[512, 640], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--compile", action="store_true", help="also torch.compile (slow to compile)")
    p.add_argument("--output", help="write OUTPUT.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loads = [load_average()]
    g = torch.Generator().manual_seed(0)
    report = {"size": args.size, "threads": args.threads, "repeats": args.repeats, "stages": {}}
    for stage in args.stages:
        c, groups, stride = STAGES[stage]
        h, w_ = args.size[0] // stride, args.size[1] // stride
        x = torch.randn(1, c, h, w_, generator=g)
        w = torch.randn(c, c // groups, 3, 3, generator=g) * 0.1
        gmacs = c * (c // groups) * 9 * h * w_ / 1e9
        fns = _variants(x, w, groups, args.compile)
        with torch.no_grad():
            ref = fns["nchw"]()
            errors = {k: max_relative_error(f(), ref) for k, f in fns.items()}
            # Calls per round: about 0.1 s of the baseline, so a round is not one scheduler tick.
            start = time.process_time()
            fns["nchw"]()
            calls = max(1, min(50, round(0.1 / max(1e-4, time.process_time() - start))))
            times = {k: [] for k in fns}
            walls = {k: [] for k in fns}
            for _ in range(args.repeats):
                for k, f in fns.items():
                    start, start_wall = time.process_time(), time.perf_counter()
                    for _ in range(calls):
                        f()
                    times[k].append((time.process_time() - start) / calls)
                    walls[k].append((time.perf_counter() - start_wall) / calls)
        base = statistics.median(times["nchw"])
        rows = {}
        for k, t in times.items():
            med = statistics.median(t)
            rows[k] = {
                "median_ms": 1e3 * med,
                "spread_ms": [1e3 * min(t), 1e3 * max(t)],
                "ratio_to_nchw": med / base,
                "gmacs_per_s": gmacs / med,
                "max_rel_err": errors[k],
                "wall_median_ms": 1e3 * statistics.median(walls[k]),
            }
        report["stages"][stage] = {
            "shape": [1, c, h, w_],
            "groups": groups,
            "calls_per_round": calls,
            "variants": rows,
        }
        print(f"{stage} {c} ch, {groups} groups of {c // groups}, {h}x{w_}: {gmacs:.3f} GMAC")
        for k, r in rows.items():
            lo, hi = r["spread_ms"]
            print(
                f"  {k:8s} {r['median_ms']:8.2f} ms ({lo:.2f}-{hi:.2f}) x{r['ratio_to_nchw']:.2f}"
                f" {r['gmacs_per_s']:6.1f} GMAC/s err {r['max_rel_err']:.1e}"
            )
    loads.append(load_average())
    report["load_average_before"], report["load_average_after"] = loads[0], loads[-1]
    report["quiet"] = quiet_verdict(loads)
    print("load average before/after:", loads[0], loads[-1], "quiet:", report["quiet"]["quiet"])
    if args.output:
        write_json_atomic(f"{args.output}.json", report, indent=1)
    return report


if __name__ == "__main__":
    main()
