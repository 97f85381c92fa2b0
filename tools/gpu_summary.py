#!/usr/bin/env python3
"""The one-screen summary of tools/gpu_check.sh: steps, tests, benchmark, demo; also summary.md.

The benchmark's achieved FLOP/s (fvcore's multiply-adds x 2 per second) is shown as a fraction of
the GPU's bf16 peak, twice: of a bf16 matrix multiply measured here in the same run (8192^3,
torch.matmul: what this GPU, driver and torch reach), and of the vendor's dense bf16 figure where
the GPU is in ``DATASHEET_BF16_TFLOPS``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# Dense (no sparsity) bf16 tensor-core TFLOP/s from NVIDIA's datasheets, by a substring of
# torch.cuda.get_device_name(); the first match wins (so "H100 PCIe" before "H100").
DATASHEET_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def datasheet_peak(gpu: str | None) -> float | None:
    for key, tflops in DATASHEET_BF16_TFLOPS:
        if gpu and key in gpu:
            return tflops
    return None


def measured_bf16_peak(n: int = 8192, iters: int = 20) -> float | None:
    """TFLOP/s of an n x n x n bf16 matmul on the current GPU; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def _steps(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line.strip()]


def _tests(path: Path) -> list[str]:
    if not path.is_file():
        return ["no pytest report (the step did not run or was killed)"]
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    lines = [
        f"{n['tests']} GPU tests: {passed} passed, {n['failures']} failed, {n['errors']} errors, "
        f"{n['skipped']} skipped"
    ]
    bad, reasons = [], set()
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            found = case.find(kind)
            if found is not None:
                message = (found.get("message") or "").splitlines()[:1]
                bad.append(f"  {kind}: {case.get('name')}: {' '.join(message)[:110]}")
        skipped = case.find("skipped")
        if skipped is not None:
            reasons.add((skipped.get("message") or "").replace("Skipped: ", ""))
    lines += bad[:6] + [f"  skipped: {r}" for r in sorted(reasons)[:2]]
    return lines


def _benchmark(path: Path, measured: float | None) -> list[str]:
    if not path.is_file():
        return ["no benchmark json (the step did not finish)"]
    report = json.loads(path.read_text())
    c, m = report["config"], report["machine"]
    sheet = datasheet_peak(m.get("gpu"))
    lines = [
        f"{', '.join(c['models'])} on {c['device']} ({m.get('gpu') or m.get('cpu')}), "
        f"{c['batch']} x {c['size'][0]}x{c['size'][1]}, {c['repeats']} rounds",
        f"bf16 peak: measured matmul {measured:.0f} TFLOP/s" if measured else "bf16 peak: -",
    ]
    if sheet:
        lines[-1] += f", datasheet {sheet:.0f} TFLOP/s"
    header = (
        f"  {'task':<9} {'setting':<16} {'ms/img':>8} {'vs d2':>6} {'peak MiB':>9} {'TFLOP/s':>8}"
    )
    lines.append(header + "  of peak (measured / datasheet)")
    for task in dict.fromkeys(r["task"] for r in report["results"]):
        rows = [r for r in report["results"] if r["task"] == task]
        for r in rows:
            tflops = 2 * r["achieved_gmacs_per_s"] / 1e3
            peak = r["peak_memory_mib"]
            frac = " / ".join(f"{tflops / p:.1%}" for p in (measured, sheet) if p) or "-"
            lines.append(
                f"  {task:<9} {r['setting']:<16} {r['ms_per_image']:>8.1f} "
                f"{r['ratio_to_baseline']:>6.2f} {'-' if peak is None else f'{peak:.0f}':>9} "
                f"{tflops:>8.2f}  {frac}"
            )
        mine = [r for r in rows if r["source"] == "project"]
        if mine:
            best = min(mine, key=lambda r: r["median_s"])
            lines.append(
                f"  -> fastest project setting for {task}: {best['setting']}, "
                f"{best['ratio_to_baseline']:.2f}x detectron2's fp32 NCHW time "
                f"(max rel err {best['max_rel_err_vs_baseline']:.1e})"
            )
    return lines


def _comparison(path: Path) -> list[str]:
    if not path.is_file():
        return ["no comparison (the demo did not finish)"]
    lines = path.read_text().splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[first:]))
    return [line[:118] for line in table]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=Path, required=True)
    p.add_argument("--junit", type=Path, required=True)
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--elapsed", type=int, required=True)
    p.add_argument("--limit", type=int, required=True)
    args = p.parse_args()

    measured = measured_bf16_peak()
    steps = _steps(args.steps)
    installed = args.plan.read_text().split() if args.plan.is_file() else []
    lines = [
        f"# resnext-det GPU check: {args.elapsed // 60} min {args.elapsed % 60} s "
        f"(limit {args.limit // 60} min {args.limit % 60} s)",
        "",
        "## Steps",
    ]
    lines += [f"  {s[0]:<10} {s[1]:<24} {s[2]:>4} s  {s[3] if len(s) > 3 else ''}" for s in steps]
    names = sorted(Path(w).name.split("-")[0] for w in installed)
    lines += [f"  installed {len(installed)} wheels the machine lacked: {' '.join(names)}"[:200]]
    lines += ["", "## pytest -m gpu", *_tests(args.junit)]
    lines += ["", "## Benchmark", *_benchmark(args.out / "benchmark.json", measured)]
    lines += ["", "## Demo pair (comparison.md)", *_comparison(args.out / "comparison.md")]
    files = sorted(f.name for f in args.out.iterdir() if f.is_file()) + ["summary.md"]
    lines += ["", f"files in {args.out}: {' '.join(dict.fromkeys(files))}"]
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
