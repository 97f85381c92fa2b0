"""The benchmark's reports: markdown tables, a plot, and the files, each written atomically."""

from __future__ import annotations

from resnext_det.io import atomic_write, write_json_atomic, write_text_atomic

from .settings import BASELINE, TASKS

__all__ = ["benchmark_markdown", "plot_benchmark", "write_benchmark"]

_TASK_TITLES = {
    "forward": "Backbone forward (stem + res2..res5, inference mode)",
    "backward": "Backbone forward + backward",
    "train": "Faster R-CNN FPN training iteration (forward, losses, backward, SGD step)",
    "inference": "Faster R-CNN FPN inference",
}


def _quiet_line(report: dict) -> str:
    q = report.get("quiet")
    if not q:
        return "Load not recorded: **NOT quiet** (unknown)."
    own = q.get("own_threads", 0)
    allowance = f" plus the run's own {own} thread(s) once it runs" if own else ""
    if q["quiet"]:
        return (
            f"Quiet machine: 1-minute load average at most {q['limit']:.1f} on {q['cores']} "
            f"cores before the run{allowance} (highest sample {q['max_load_1min']})."
        )
    return (
        f"**NOT quiet**: the 1-minute load average reached {q['max_load_1min']} on {q['cores']} "
        f"cores (a quiet run stays at or below {q['limit']:.1f}{allowance}); other processes "
        "shared the CPU, so absolute times are inflated and only the interleaved ratios mean much."
    )


def _peak_lines(report: dict) -> list[str]:
    rows = []
    for label, by_dtype in (report.get("peak") or {}).items():
        for dtype, p in by_dtype.items():
            lo, hi = p["spread_gmacs_per_s"]
            each = " | ".join(f"{p['kernels'][k]['gmacs_per_s']:.1f}" for k in p["kernels"])
            rows.append(
                f"| {label} | {dtype} | {each} | {p['gmacs_per_s']:.1f} ({p['kernel']}"
                f"{', memory ' + p['freed_memory'] if 'freed_memory' in p else ''}) | "
                f"{lo:.1f}-{hi:.1f} |"
            )
    if not rows:
        return []
    return [
        "Machine peak, measured in the same rounds on the same threads: per dtype per round the "
        "same n^3 multiply-adds (n = 2048) as an n x n matrix product and as a channels-last "
        "1x1 convolution; the peak is the faster one's median, in whichever process was faster "
        "(GMAC/s):",
        "",
        "| group | dtype | matmul | 1x1 conv NHWC | peak | min-max |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def _memory_line(report: dict) -> str:
    c = report["config"]
    mode = c.get("memory", "kept" if c.get("freed_memory_kept") else "returned")
    kept = [r["setting"] for r in report["results"] if r.get("freed_memory") == "kept"]
    if mode == "as-shipped":
        line = "Freed memory **as shipped** (`--memory as-shipped`): each path's process does " + (
            f"what its tools do, so {', '.join(f'`{s}`' for s in dict.fromkeys(kept))} ran in a "
            "process that keeps freed memory (the project's CPU trainer and inference; a process "
            "started with `resnext_det.runtime.KEEP_FREED_MEMORY_ENV`) and the rest, detectron2 "
            "included, in one with the allocator's default (see the memory column, measured in "
            "each process)."
            if kept else
            "what its tools do, and no setting here keeps freed memory (the project keeps it on "
            "the CPU only, where glibc allows): every variant had the allocator's default."
        )  # fmt: skip
    elif c.get("freed_memory_kept"):
        line = (
            "Freed memory **kept** (`--memory kept`, what the project's CPU trainer and "
            "inference do), for every setting, the baseline included."
        )
    else:
        line = (
            "Freed memory returned to the kernel (the allocator's default"
            + ("; `--memory kept` was asked for but is not available here" if mode == "kept"
               else "")
            + "), for every setting: page faults are part of every figure."
        )  # fmt: skip
    lacking = sorted({r["setting"] for r in report["results"] if r.get("lacks_process_setting")})
    if lacking:
        line += (
            f" {', '.join(f'`{s}`' for s in lacking)} here lack(s) the project's "
            "`KEEP_FREED_MEMORY`, a process setting: `--memory as-shipped` times what its tools "
            "do."
        )
    return line


def benchmark_markdown(report: dict, command: str | None = None) -> str:
    """The report as markdown: the machine, its load, its peak, the command, one table per task."""
    from tabulate import tabulate

    m, c = report["machine"], report["config"]
    lines = [
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} CPUs, torch {m.get('torch')}, "
        f"{m.get('threads')} threads{', GPU ' + m['gpu'] if 'gpu' in m else ''}); device "
        f"`{c['device']}`; images {c['size'][0]}x{c['size'][1]}, batch {c['batch']}; "
        f"{c['repeats']} interleaved rounds after {c['warmup']} warm-up call(s); "
        f"{'wall-clock' if c.get('clock', 'wall') == 'wall' else 'process CPU'} time. Load average "
        f"(1, 5, 15 min) before {report.get('load_average_before')}, after "
        f"{report.get('load_average_after')}.",
        "",
        _quiet_line(report),
        "",
        _memory_line(report),
        "",
    ]
    if not report.get("enough_rounds", True):
        lines += [
            f"**Indicative only**: {c['repeats']} rounds, fewer than the 5 a quoted figure needs.",
            "",
        ]
    lines += _peak_lines(report)
    if command:
        lines += ["```", command, "```", ""]
    for task in TASKS:
        rows = [r for r in report["results"] if r["task"] == task]
        if not rows:
            continue
        table = [
            [
                r["model"],
                r["setting"],
                f"{r['ms_per_image']:.1f}",
                f"{1e3 * r['q1_s'] / r['batch']:.1f}-{1e3 * r['q3_s'] / r['batch']:.1f}",
                f"{1e3 * r['min_s'] / r['batch']:.1f}-{1e3 * r['max_s'] / r['batch']:.1f}",
                f"{r['images_per_s']:.2f}",
                f"**{r['ratio_to_baseline']:.2f}** ({_spread(r)})",
                "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}",
                f"{r['gmacs_per_image']:.1f}",
                f"{r['achieved_gmacs_per_s']:.1f}",
                _fraction(r),
                f"{r['max_rel_err_vs_baseline']:.1e}",
                _faults(r),
                r.get("freed_memory", "returned"),
            ]
            for r in rows
        ]
        headers = [
            "model",
            "setting",
            "ms/img (median)",
            "IQR",
            "min-max",
            "img/s",
            "time vs detectron2 (min-max)",
            "peak MiB",
            "GMAC/img",
            "GMAC/s",
            "of peak",
            "max rel err",
            "page faults/call",
            "freed memory",
        ]
        lines += [
            f"### {_TASK_TITLES[task]}",
            "",
            tabulate(table, headers=headers, tablefmt="github"),
            "",
        ]
    memory = {r["memory_measure"] for r in report["results"]}
    lines.append(
        "Peak memory: " + ", ".join(sorted(memory)) + " (cpu_profiler_allocations: the peak of "
        "tensor memory allocated through torch's CPU allocator during one call, above what was "
        "allocated before it, from torch.profiler's allocation events (oneDNN's own scratch "
        "buffers are not included); cuda_max_allocated: torch.cuda.max_memory_allocated during "
        "one call minus the memory allocated before). GMAC: fvcore's count, one multiply-add = one "
        "flop. max rel err: max |output - detectron2's| / max |detectron2's| (backward: the input "
        "gradient; train: the RPN losses of one seeded forward). time vs detectron2: ratio of "
        "medians (min-max: each round's time over the baseline's median). of peak: GMAC/s over "
        "the peak of the same dtype measured in the same rounds."
    )
    return "\n".join(lines) + "\n"


def _faults(r: dict) -> str:
    f = r.get("minor_faults_per_call")
    return "-" if f is None else f"{f / 1e3:.0f}k" if f >= 1e4 else f"{f:.0f}"


def _spread(r: dict) -> str:
    lo, hi = r.get("ratio_spread") or (float("nan"), float("nan"))
    return f"{lo:.2f}-{hi:.2f}"


def _fraction(r: dict) -> str:
    f = r.get("fraction_of_peak")
    return "-" if f is None else f"{100 * f:.0f}% ({r['peak_dtype']})"


def plot_benchmark(report: dict, path: str) -> None:
    """Time per image against GMACs per image, one panel per task, one marker per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in report["results"])]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5), squeeze=False)
    markers = "osD^v<>px*hH+"
    settings = list(dict.fromkeys(r["setting"] for r in report["results"]))
    for ax, task in zip(axes[0], tasks):
        for i, setting in enumerate(settings):
            rows = [r for r in report["results"] if r["task"] == task and r["setting"] == setting]
            if not rows:
                continue
            ax.scatter(
                [r["gmacs_per_image"] for r in rows],
                [r["ms_per_image"] for r in rows],
                marker=markers[i % len(markers)],
                label=setting,
                s=40,
            )
        for model in dict.fromkeys(r["model"] for r in report["results"] if r["task"] == task):
            row = next(
                r
                for r in report["results"]
                if r["task"] == task and r["model"] == model and r["setting"] == BASELINE
            )
            ax.annotate(
                model,
                (row["gmacs_per_image"], row["ms_per_image"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xlabel("GMACs per image (fvcore)")
        ax.set_ylabel("ms per image (median)")
        ax.set_title(_TASK_TITLES[task], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    c = report["config"]
    fig.suptitle(
        f"{report['machine'].get('cpu')} / {c['device']}, {c['size'][0]}x{c['size'][1]}",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write_benchmark(
    report: dict,
    json_path: str | None,
    markdown_path: str | None,
    plot_path: str | None = None,
    command: str | None = None,
) -> None:
    """Write the report as json and/or markdown (and the plot), each atomically."""
    if json_path:
        write_json_atomic(json_path, {**report, "command": command}, indent=1)
    if markdown_path:
        write_text_atomic(markdown_path, benchmark_markdown(report, command))
    if plot_path:
        plot_benchmark(report, plot_path)
