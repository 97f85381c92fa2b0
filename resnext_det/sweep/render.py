"""``sweep.md`` and ``sweep.png`` from a sweep's report."""

from __future__ import annotations

import math
import os
from typing import Any

from ..evaluation.report import FINDING, IMAGES_ONLY
from .plan import COMPLEXITY_INPUT, KINDS, METRICS

# ------------------------------------------------------------------------------------------


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _comparisons(n: int) -> str:
    return f"{n} comparison{'s' * (n != 1)}"


def _delta_text(d: dict) -> str:
    return f"{_f(d['value'], True)} [{_f(d['low'], True)}, {_f(d['high'], True)}]"


def _summary(report: dict[str, Any]) -> dict[str, list[str]]:
    """What the curve shows and what it does not, in sentences (the md's words)."""
    variants = [v for v in report["variants"] if v["delta"] is not None]
    curve = [v for v in report["variants"] if v["kind"] == "cardinality" and v["AP"] is not None]
    level = report["familywise"]["interval_confidence"]
    shows, not_shown = [], []
    for key, label in METRICS.items():
        up = [v for v in variants if v["delta"][key]["excludes_0"] and v["delta"][key]["low"] > 0]
        down = [
            v for v in variants if v["delta"][key]["excludes_0"] and v["delta"][key]["high"] < 0
        ]
        if not up and not down:
            shows.append(
                f"{label}: no variant differs measurably from the ResNet (C = 1); every "
                f"difference's {100 * level:.1f}% interval holds 0."
            )
        for group, word in ((up, "higher"), (down, "lower")):
            if group:
                shows.append(
                    f"{label}: {word} than the ResNet for "
                    + ", ".join(
                        f"{v['label']} ({_delta_text(v['delta'][key])}"
                        + ("" if v["run_to_run_measured"] else "; test images only: no finding")
                        + ")"
                        for v in group
                    )
                    + "."
                )
        means = [v[key] for v in curve]
        if len(means) >= 3:
            steps = [b - a for a, b in zip(means, means[1:])]
            shape = (
                "rise at every step of C"
                if all(s > 0 for s in steps)
                else "fall at every step of C"
                if all(s < 0 for s in steps)
                else "do not move one way as C rises"
            )
            shows.append(
                f"{label} means by C: "
                + ", ".join(f"{v['cardinality']}: {_f(v[key])}" for v in curve)
                + f"; they {shape}."
            )
    cx = [v for v in report["variants"] if v["kind"] == "cardinality"][1:]
    worst = max(cx, key=lambda v: abs(v["params_vs_baseline"]))
    shows.append(
        "Equal complexity within the template's rounding of d to an integer: parameters "
        + ", ".join(f"C={v['cardinality']} {100 * v['params_vs_baseline']:+.1f}%" for v in cx)
        + ", GFLOPs "
        + ", ".join(f"C={v['cardinality']} {100 * v['gflops_vs_baseline']:+.1f}%" for v in cx)
        + f" against the ResNet's (furthest: {worst['label']})."
    )
    not_shown.append(
        "A shape of the means (rising, falling) whose intervals hold 0 is what the noise of "
        "training runs and test images alone produces: it is not evidence for or against the "
        "paper's curve."
    )
    if not report["run_to_run_measured"]:
        not_shown.append(
            "Run-to-run variation is unmeasured (one training run on at least one side): the "
            "intervals cover the test images only, and a difference that excludes 0 is not a "
            "finding; train 3 or more runs per variant."
        )
    not_shown.append(
        f"Anything beyond this data set ({report['test_set']}, {report['num_images']} images), "
        "this schedule and these widths: the paper's gains are at ImageNet/COCO scale and "
        "ResNeXt-50/101 widths, where d >= 4 for every C it tests."
    )
    not_shown.append(
        "Speed: equal parameters and multiply-adds are not equal time; grouped convolutions run "
        "fewer multiply-adds per second than dense ones."
    )
    if any(v["kind"] != "cardinality" for v in report["variants"]):
        not_shown.append(
            "Which 2x-complexity model beats which: each is compared with the ResNet, not with "
            "the others; overlapping intervals do not make them equal."
        )
    if report["missing"]:
        not_shown.append(
            f"The {len(report['missing'])} missing cells: "
            + ", ".join(f"{m['variant']}/seed_{m['seed']}" for m in report["missing"])
            + " (the report covers the cells done)."
        )
    return {"shows": shows, "does_not_show": not_shown}


def _mark(delta: dict, variant: dict) -> str:
    """The comparison's marks (:mod:`resnext_det.evaluation.report`): a finding, or an
    images-only interval that excludes 0."""
    if not delta["excludes_0"]:
        return ""
    return f" {FINDING if variant['run_to_run_measured'] else IMAGES_ONLY}"


def render_markdown_sweep(report: dict[str, Any]) -> str:
    """``sweep.md``: the settings, one row per variant, and the summary in words."""
    fw = report["familywise"]
    boot = report["bootstrap"] or {}
    lines = [
        "# Cardinality sweep at equal complexity",
        "",
        f"Config: `{report['config_file']}`; template: depth {report['template']['depth']}, "
        f"res2 {report['template']['res2_out_channels']} channels, ResNet width "
        f"d = {report['template']['resnet_width']}. Test set `{report['test_set']}` "
        f"({report['num_images']} images); {report['runs_planned']} training runs planned per "
        f"variant. Intervals: {boot.get('method', '-')}, {boot.get('resamples', '-')} "
        f"resamples; each interval at {100 * fw['interval_confidence']:.2f}% ({fw['method']} "
        f"over {_comparisons(fw['comparisons'])} with C = 1), so that {fw['family']} hold "
        f"together at {100 * report['confidence']:.0f}%. "
        f"Complexity: {report['complexity_counted']}.",
        "",
        "| variant | C | d | params (M) | GFLOPs | vs C=1 params / GFLOPs | runs (AP@0.5 each) "
        "| AP | AP@0.5 | ΔAP | ΔAP@0.5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in report["variants"]:
        each = ", ".join(_f(r["AP50"]) for r in v["runs"]) or "none done"
        ci = v["ci"] or {}
        cells = [
            f"{v['label']}" + (" (baseline)" if v["name"] == report["baseline"] else ""),
            str(v["cardinality"]),
            str(v["width_per_group"]),
            f"{v['params'] / 1e6:.3f}",
            f"{v['gflops']:.3f}",
            f"{100 * v['params_vs_baseline']:+.1f}% / {100 * v['gflops_vs_baseline']:+.1f}%",
            f"{len(v['runs'])}: {each}",
        ]
        for k in METRICS:
            iv = ci.get(k) or [None, None]
            cells.append(f"{_f(v[k])} [{_f(iv[0])}, {_f(iv[1])}]" if v[k] is not None else "-")
        for k in METRICS:
            d = (v["delta"] or {}).get(k)
            cells.append(_delta_text(d) + _mark(d, v) if d else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "AP and AP@0.5 on COCO's 0-100 scale, means over runs with their intervals; Δ: the "
        f"difference from the ResNet (C = 1); `{FINDING}`: its interval excludes 0; "
        f"`{IMAGES_ONLY}`: it excludes 0 but covers the test images only (one run on a side), "
        "which is no finding. Every run's weights and figures are in sweep.json; per-category AP "
        "in comparison.md.",
        "",
        "## What the curve shows",
        "",
        *(f"- {s}" for s in report["summary"]["shows"]),
        "",
        "## What it does not show",
        "",
        *(f"- {s}" for s in report["summary"]["does_not_show"]),
    ]
    if report["missing"]:
        lines += ["", "## Missing cells", ""]
        lines += [f"- {m['variant']} seed {m['seed']}: {m['state']}" for m in report["missing"]]
    return "\n".join(lines)


def render_png(report: dict[str, Any], path: str | os.PathLike) -> None:
    """AP and AP@0.5 against C (log axis; every run a dot, each variant's mean with its
    interval, the 2x-complexity models beside), the differences from C = 1 with the family's
    intervals, and params / GFLOPs per variant relative to C = 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = report["variants"]
    curve = [v for v in variants if v["kind"] == "cardinality"]
    # The 2x ResNets have C = 1 too: nudge them apart from the baseline on the log axis.
    nudge = {"deeper": 0.8, "wider": 1.25}
    xs = {v["name"]: v["cardinality"] * nudge.get(v["kind"], 1.0) for v in variants}
    style = {  # kind -> marker, colour
        "cardinality": ("o", "tab:blue"),
        "deeper": ("s", "tab:orange"),
        "wider": ("D", "tab:green"),
        "cardinality_2x": ("^", "tab:red"),
    }
    widths = {v["cardinality"]: f"{v['width_per_group']}d" for v in curve}
    ticks = sorted({v["cardinality"] for v in variants})
    labels = [f"{c}\n({widths[c]})" if c in widths else str(c) for c in ticks]
    level = 100 * report["familywise"]["interval_confidence"]
    fw = report["familywise"]

    def c_axis(ax) -> None:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, labels)
        ax.minorticks_off()
        ax.set_xlim(min(xs.values()) / 1.6, max(xs.values()) * 1.6)
        ax.set_xlabel("cardinality C (width d)")
        ax.grid(alpha=0.3)

    def interval(value: float, low: float | None, high: float | None) -> Any:
        if low is None or high is None:
            return None
        return [[max(value - low, 0.0)], [max(high - value, 0.0)]]

    plt.rcParams.update({"font.size": 11})
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), dpi=100)
    for ax, (key, label) in zip(axes[0], METRICS.items()):
        for v in variants:
            marker, color = style[v["kind"]]
            x = xs[v["name"]]
            pts = [r[key] for r in v["runs"] if r[key] is not None]
            ax.scatter(
                [x / 1.05] * len(pts), pts, s=24, color=color, alpha=0.5, marker=marker, lw=0,
                label="each run" if v is variants[0] else None,
            )  # fmt: skip
            if v[key] is None:
                continue
            iv = (v["ci"] or {}).get(key) or [None, None]
            kind = "mean, interval" if v["kind"] == "cardinality" else KINDS[v["kind"]]
            named = v is variants[0] or v["kind"] != "cardinality"
            ax.errorbar(
                x * 1.05, v[key], yerr=interval(v[key], *iv), fmt=marker, color=color, ms=8,
                capsize=4, lw=1.5, label=kind if named else None,
            )  # fmt: skip
        means = [(xs[v["name"]] * 1.05, v[key]) for v in curve if v[key] is not None]
        ax.plot(*zip(*means), color="tab:blue", lw=1.2, alpha=0.6)
        c_axis(ax)
        ax.set_ylabel(f"{label} (0-100)")
        ax.set_title(f"{label} against C at equal complexity ({level:.1f}% intervals)")
        ax.legend(fontsize=9, loc="best")
    ax = axes[1][0]
    compared = [v for v in variants if v["delta"] is not None]
    for i, (key, label) in enumerate(METRICS.items()):
        color = ("tab:purple", "tab:cyan")[i]
        for v in compared:
            d = v["delta"][key]
            ax.errorbar(
                xs[v["name"]] * (0.95, 1.05)[i], d["value"],
                yerr=interval(d["value"], d["low"], d["high"]), fmt=style[v["kind"]][0],
                color=color, ms=7, capsize=4, lw=1.5,
                label=f"Δ{label}" if v is compared[0] else None,
            )  # fmt: skip
    ax.axhline(0, color="black", lw=1)
    c_axis(ax)
    ax.set_ylabel("difference from C = 1 (0-100)")
    ax.set_title(
        f"Difference from C = 1: {level:.1f}% intervals\n({fw['method']} over "
        f"{_comparisons(fw['comparisons'])}: all hold together at "
        f"{100 * report['confidence']:.0f}%)",
        fontsize=11,
    )
    if compared:
        ax.legend(fontsize=9)
    ax = axes[1][1]
    pos = list(range(len(variants)))
    for j, (key, unit, color) in enumerate(
        (("params", "parameters", "tab:gray"), ("gflops", "GFLOPs", "tab:olive"))
    ):
        rel = [1.0 + v[f"{key}_vs_baseline"] for v in variants]
        bars = ax.bar([p + (j - 0.5) * 0.38 for p in pos], rel, 0.38, color=color, label=unit)
        for bar, v in zip(bars, variants):
            ax.annotate(
                f"{100 * v[f'{key}_vs_baseline']:+.0f}%",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=8,
            )  # fmt: skip
    ticks_x = [f"{v['label']}\n{v['params'] / 1e6:.3g}M, {v['gflops']:.3g} GF" for v in variants]
    ax.axhline(1.0, color="black", lw=1)
    tilt = 15 if len(variants) > 4 else 0
    ax.set_xticks(pos, ticks_x, rotation=tilt, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel("relative to C = 1")
    ax.set_ylim(0, max(1.0 + v["params_vs_baseline"] for v in variants) * 1.3 + 0.1)
    ax.set_title(
        f"Complexity: stem + res2..res5 at {COMPLEXITY_INPUT[0]}x{COMPLEXITY_INPUT[1]}\n"
        "(equal within the template's rounding of d)",
        fontsize=11,
    )
    ax.legend(fontsize=9, loc="upper left")
    runs = sorted({len(v["runs"]) for v in variants})
    fig.suptitle(
        f"Cardinality sweep, depth {report['template']['depth']}: {report['test_set']} "
        f"({report['num_images']} images), {'/'.join(map(str, runs))} training "
        f"run{'s' * (runs != [1])} per variant"
        + (f", {len(report['missing'])} cells missing" if report["missing"] else "")
        + ("" if report["run_to_run_measured"] else "\n(run-to-run variation unmeasured: "
           "intervals over the test images only)"),
        fontsize=13,
    )  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# The whole job, or one cell
