"""``comparison.png``: the AP metrics per model with their intervals, and PR curves at IoU 0.5."""

from __future__ import annotations

import os

from .coco import RECALL_THRESHOLDS
from .text import _LABELS, _fmt, _mpl_text

__all__ = ["render_png"]


def render_png(report: dict, path: str | os.PathLike) -> None:
    """Bars of the AP metrics per model (with bootstrap intervals) and PR curves at IoU 0.5."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in tests and on servers
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(report["models"])
    keys = ["AP50", "AP", "AP75", "APs", "APm", "APl"]
    fig, (ax, ax_pr) = plt.subplots(
        1, 2, figsize=(13, 5), dpi=100, gridspec_kw={"width_ratios": [1.4, 1]}
    )
    x = np.arange(len(keys))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        m = report["models"][name]
        vals = np.array([np.nan if m[k] is None else m[k] for k in keys], dtype=float)
        pos = x + (i - (len(names) - 1) / 2) * width
        runs = m.get("runs", 1)
        label = f"{_mpl_text(name)} ({runs} run{'s' * (runs != 1)})"
        ax.bar(pos, np.nan_to_num(vals), width, label=label)
        for j in np.flatnonzero(np.isnan(vals)):  # e.g. APs with no small objects in the set
            ax.text(pos[j], 1, "n/a", ha="center", va="bottom", fontsize=8, rotation=90)
        # Each training run's value as a point beside the bar: the spread shows at a glance.
        for j, k in enumerate(keys):
            pts = [r.get(k) for r in m.get("per_run", [])]
            pts = [v for v in pts if v is not None and np.isfinite(v)]
            if len(pts) > 1:
                xs = pos[j] + width * 0.32 + np.linspace(-0.08, 0.08, len(pts)) * width
                ax.scatter(xs, pts, s=10, color="black", zorder=3, linewidths=0)
        # Error bars only where there is an interval (the bootstrap covers AP, AP50, AP75).
        for j, k in enumerate(keys):
            ci = m.get("ci", {}).get(k)
            if ci and None not in ci and not np.isnan(vals[j]):
                err = [[max(vals[j] - ci[0], 0)], [max(ci[1] - vals[j], 0)]]
                ax.errorbar(pos[j], vals[j], yerr=err, color="black", capsize=3, lw=1)
    ax.set_xticks(x, [_LABELS.get(k, k) for k in keys])
    ax.set_ylabel("COCO metric (0-100)")
    conf = report["bootstrap"]["confidence"] if report["bootstrap"] else None
    title = "Box AP per model (bars: run mean; dots: each run)"
    ax.set_title(title + (f", {int(conf * 100)}% CI" if conf else ""), fontsize=11)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    for name in names:
        curve = report["models"][name].get("pr_curve_50")
        if curve:
            y = np.array([np.nan if v is None else v for v in curve], dtype=float)
            ax_pr.plot(
                RECALL_THRESHOLDS,
                y,
                label=f"{_mpl_text(name)} (AP@0.5 {_fmt(report['models'][name]['AP50'])})",
            )
    ax_pr.set_xlim(0, 1)
    ax_pr.set_ylim(0, 1.02)
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("interpolated precision")
    ax_pr.set_title("Precision-recall at IoU 0.5 (mean over categories)", fontsize=11)
    ax_pr.legend(fontsize=8)
    ax_pr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
