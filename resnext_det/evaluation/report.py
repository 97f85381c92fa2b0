"""Writers for a backbone comparison: markdown, json, csv, png and the terminal table.

Every writer takes the report dict that :func:`~resnext_det.evaluation.compare.compare_results`
returns. :func:`write_outputs` writes all files to temporary names in the output directory first
and renames them only when every one was written, so a failure leaves no half-written report.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import unicodedata
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from ..io import staged_files
from .coco import METRIC_KEYS, RECALL_THRESHOLDS
from .gallery import GALLERY_DIR

__all__ = [
    "OUTPUT_FILES",
    "check_model_names",
    "check_out_dir",
    "markdown_text",
    "output_names",
    "format_table",
    "render_csv",
    "render_json",
    "render_markdown",
    "render_png",
    "write_outputs",
]

OUTPUT_FILES = ("comparison.md", "comparison.json", "comparison.csv", "comparison.png")
_LABELS = {"AP50": "AP@0.5", "AP75": "AP@0.75"}
# `*`: the interval of a difference excludes 0 and covers test images and training runs.
# `†`: it excludes 0 but covers test images only (a model with one run): not a finding.
FINDING, IMAGES_ONLY = "*", "†"


def check_model_names(names: Any) -> None:
    """Refuse model names that a report cannot show as given: not a string, empty, or holding
    control characters or line breaks (a newline would start a new markdown line, a heading).
    Everything else is shown escaped (:func:`markdown_text`) and made a file name by
    :func:`resnext_det.io.file_name_for`."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a model name must be a non-empty string; got {name!r}")
        bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")})
        if bad:
            raise ValueError(
                f"model name {name!r} holds control characters or line breaks "
                f"({', '.join(repr(c) for c in bad)}); names go into reports and file names: use "
                "letters, digits, spaces and punctuation"
            )


# Characters markdown (CommonMark + GitHub's tables, strikethrough and math) gives a meaning
# anywhere in a line. ("_" only where it can open or close emphasis: see markdown_text.)
_MD_PUNCTUATION = frozenset("\\`*[]|~$#")  # ( ) ! { } mean nothing once [ ] are escaped
_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_text(text: Any) -> str:
    """``text`` (a name, a path, a category: anything a user gave) as literal markdown:
    punctuation backslash-escaped (``|`` no longer ends a table cell, ``#`` starts no heading),
    ``&<>`` as entities (``<script>`` is text), control characters written as escapes
    (``\\n``), so it renders as given and stays on its line. An ``_`` between two letters or
    digits (``results_R_run1.json``) cannot start emphasis in CommonMark and stays as it is."""
    text = str(text)
    out = []
    for i, ch in enumerate(text):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in _MD_PUNCTUATION:
            out.append("\\" + ch)
        elif ch == "_":
            inside = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append("_" if inside else "\\_")
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def _plain(text: Any) -> str:
    return str(text)


def _mpl_text(text: Any) -> str:
    # matplotlib reads $...$ as math (an unbalanced "$" in a name fails the whole figure).
    return str(text).replace("$", r"\$")


def check_out_dir(out_dir: str | os.PathLike | None) -> None:
    """Raise if ``out_dir`` cannot hold the report: an existing file, a read-only folder or one
    that would be made under a file or a read-only folder. Called before any work, so that a
    comparison does not run for minutes to fail at the end."""
    if out_dir is None or str(out_dir) == "":
        return
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is an existing file, not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(
            f"{str(path)!r}: {str(probe)!r} is a file, so no folder can be made under it"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "is" if probe == path else f"would be made under {str(probe)!r}, which is"
        raise PermissionError(f"{str(path)!r} {where} not writable")


def output_names(
    extra: dict[str, Any] | None = None, pictures: dict[str, bytes] | None = None
) -> list[str]:
    """The files :func:`write_outputs` writes, in order."""
    return [*OUTPUT_FILES, *(extra or {}), *(pictures or {})]


def _mark(m: dict, key: str) -> str:
    if not m.get("delta_significant", {}).get(key):
        return ""
    return FINDING if m.get("delta_calibrated") else IMAGES_ONLY


def _fmt(x: Any, digits: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(ci: list | None, digits: int = 1, signed: bool = False) -> str:
    if not ci or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in ci):
        return ""
    return f"[{_fmt(ci[0], digits, signed)}, {_fmt(ci[1], digits, signed)}]"


def _size_digits(value: float | None) -> int:
    """Decimals for params/GFLOPs: small demo networks (0.85M, 0.11 GFLOPs) need two."""
    return 2 if value is not None and value < 10 else 1


def _main_rows(
    report: dict, text: Callable[[Any], str] = _plain
) -> tuple[list[str], list[list[str]]]:
    """The paper-style table: model, complexity, speed, AP@0.5 and AP with deltas and intervals
    (names through ``text``: :func:`markdown_text` for markdown)."""
    base = report["baseline"]
    headers = ["model", "runs", "params (M)", "GFLOPs", "ms/img", "AP@0.5", "AP", "ΔAP@0.5", "ΔAP"]
    rows = []
    for name, m in report["models"].items():
        ci, dci = m.get("ci", {}), m.get("delta_ci", {})
        params = m.get("backbone_params")
        row = [
            text(name) + (" (baseline)" if name == base else ""),
            str(m.get("runs", 1)),
            _fmt(params / 1e6 if params else None, _size_digits(params / 1e6 if params else None)),
            _fmt(m.get("backbone_gflops"), _size_digits(m.get("backbone_gflops"))),
            _fmt(m["seconds_per_image"] * 1e3 if m.get("seconds_per_image") else None),
            f"{_fmt(m['AP50'])} {_ci(ci.get('AP50'))}".strip(),
            f"{_fmt(m['AP'])} {_ci(ci.get('AP'))}".strip(),
        ]
        for key in ("AP50", "AP"):
            if name == base:
                row.append("")
            else:
                star = _mark(m, key)
                delta = _fmt(m["delta"][key], signed=True)
                row.append(f"{delta}{star} {_ci(dci.get(key), signed=True)}".strip())
        rows.append(row)
    return headers, rows


def format_table(report: dict, tablefmt: str = "github", *, markdown: bool = False) -> str:
    """The main table as text (tabulate), for the terminal or (``markdown``: names escaped)
    markdown."""
    from tabulate import tabulate

    headers, rows = _main_rows(report, markdown_text if markdown else _plain)
    table = tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)
    if markdown:  # the markdown says these in its own paragraphs
        return table
    # The console's table explains its marks and its timing too (a † alone says nothing).
    notes = [f"{mark} {text}" for mark, text in _mark_notes(report).items() if mark in table]
    timing = timing_note(report)
    return "\n".join([table, *notes, *([timing] if timing else [])])


def render_markdown(report: dict) -> str:
    from tabulate import tabulate

    b = report["bootstrap"]
    conf = int(round(100 * b["confidence"])) if b else 95
    lines = [
        "# Backbone comparison",
        "",
        f"Ground truth: {markdown_text(report['ground_truth'])} ({report['num_images']} "
        f"images, {report['num_categories']} categories). "
        f"Baseline: **{markdown_text(report['baseline'])}**.",
    ]
    flops_size = next(
        (m.get("flops_input_size") for m in report["models"].values() if m.get("flops_input_size")),
        None,
    )
    if flops_size:
        lines.append(
            f"Params and GFLOPs (multiply-adds) are of the backbone (ResNet/ResNeXt + FPN) "
            f"at a {flops_size[0]}x{flops_size[1]} input."
        )
    if timing_note(report):
        lines.append(timing_note(report))
    lines += _interval_lines(report)
    lines += ["", format_table(report, markdown=True), ""]
    lines += _runs_section(report)
    lines += _gallery_section(report)
    lines += ["## All COCO metrics", ""]
    headers = ["model", *[_LABELS.get(k, k) for k in METRIC_KEYS]]
    rows = []
    md = markdown_text
    for name, m in report["models"].items():
        rows.append([md(name), *[_fmt(m[k]) for k in METRIC_KEYS]])
        if name != report["baseline"]:
            rows.append(
                [
                    f"  Δ vs {md(report['baseline'])}",
                    *[_fmt(m["delta"][k], signed=True) for k in METRIC_KEYS],
                ]
            )
    lines += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if b:
        lines += ["## Bootstrap", ""]
        rows = []
        for name, m in report["models"].items():
            for key in ("AP", "AP50", "AP75"):
                rows.append(
                    [
                        md(name),
                        _LABELS.get(key, key),
                        _fmt(m[key], 2),
                        _ci(m["ci"].get(key), 2),
                        "" if name == report["baseline"] else _fmt(m["delta"][key], 2, True),
                        "" if name == report["baseline"] else _ci(m["delta_ci"][key], 2, True),
                        "" if name == report["baseline"] else _fmt(m["delta_p"][key], 3),
                    ]
                )
        lines += [
            tabulate(
                rows,
                headers=["model", "metric", "value", f"{conf}% CI", "Δ", f"Δ {conf}% CI", "p"],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
            f"Bootstrap time: {b['seconds']:.1f} s.",
            "",
        ]
    names = list(report["models"])
    cats = list(next(iter(report["models"].values()))["per_category_AP"])
    if cats:
        lines += ["## AP per category", ""]
        rows = [
            [md(c), *[_fmt(report["models"][n]["per_category_AP"][c]) for n in names]] for c in cats
        ]
        headers = ["category", *map(md, names)]
        lines += [
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
            "",
        ]
    return "\n".join(lines)


def _interval_lines(report: dict) -> list[str]:
    """What the intervals are and what they cover, in words (per difference)."""
    b = report["bootstrap"]
    if not b:
        return ["No bootstrap was run (no intervals)."]
    conf = int(round(100 * b["confidence"]))
    base = report["baseline"]
    lines = [
        "",
        f"Intervals: {conf}% {b['method']} ({b['resamples']} image resamples, seed {b['seed']}; "
        "docs/statistics.md has the method and its measured coverage). A model's value is the "
        "mean over its training runs; a Δ is the difference of the run means.",
        "",
    ]
    for name, m in report["models"].items():
        if name == base:
            continue
        lines.append(
            f"- Δ {markdown_text(name)} vs {markdown_text(base)}: the interval covers "
            f"{m['delta_covers']}."
        )
    lines.append("")
    lines += [f"`{mark}` {text}" for mark, text in _mark_notes(report).items()]
    return lines


def _mark_notes(report: dict) -> dict[str, str]:
    """What the table's marks mean (the console's table and the markdown say the same)."""
    b = report["bootstrap"]
    if not b:
        return {}
    notes = {
        FINDING: "marks a Δ whose interval excludes 0 over both test images and training runs."
    }
    if not b.get("calibrated", True):
        notes[IMAGES_ONLY] = (
            "marks a Δ whose interval excludes 0 over test images only: with one "
            "run of a model, run-to-run variation is unmeasured, and on small networks it is often "
            "larger than the difference. That is not a finding: train 3 or more runs per model "
            "(seeds 0..N-1) and compare them all."
        )
    return notes


def timing_note(report: dict) -> str:
    """How ms/img was measured: device, torch's threads, the machine's load average (1 minute)
    before and after, and a warning when the machine was loaded (ms/img then changes many times
    over with other work; compare timings of one machine state only). Empty without timings."""
    timed = [m for m in report["models"].values() if m.get("seconds_per_image")]
    if not timed:
        return ""
    loads = [
        v for m in timed for v in (m.get("load_average_before"), m.get("load_average_after"))
        if v is not None
    ]  # fmt: skip
    first = timed[0]
    cpus = first.get("cpu_count") or 0
    text = f"ms/img: on {first.get('device', '?')}"
    if first.get("torch_threads"):
        text += f", {first['torch_threads']} torch threads"
    if loads:
        text += f", load average {min(loads):.2f}-{max(loads):.2f} on {cpus} CPUs"
    text += "."
    before = [m.get("load_average_before") for m in timed if m.get("load_average_before")]
    if cpus and before and max(before) > cpus / 2:
        text += (
            f" The machine was loaded (load average {max(before):.2f} before timing, on {cpus} "
            "CPUs): ms/img is slower than on an idle machine and varies with the other work; "
            "compare it only with timings taken in the same state."
        )
    return text


def _runs_section(report: dict) -> list[str]:
    """Each training run's figures, the run mean and the between-run SD."""
    if all(m.get("runs", 1) == 1 for m in report["models"].values()):
        return []
    from tabulate import tabulate

    keys = ("AP50", "AP", "AP75")
    rows = []
    md = markdown_text
    for name, m in report["models"].items():
        for i, r in enumerate(m.get("per_run", [])):
            results = md(r.get("results_file") or "")
            rows.append([md(name), str(i), *[_fmt(r[k]) for k in keys], results])
        sd = m.get("between_run_sd", {})
        rows.append([md(name), "mean", *[_fmt(m[k]) for k in keys], ""])
        rows.append([md(name), "between-run SD", *[_fmt(sd.get(k)) for k in keys], ""])
    headers = ["model", "run", *[_LABELS.get(k, k) for k in keys], "results"]
    return [
        "## Training runs",
        "",
        tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
        "",
    ]


def _gallery_section(report: dict) -> list[str]:
    """The gallery's pictures (gallery.py), one table per model against the baseline."""
    from tabulate import tabulate

    lines = []
    md = markdown_text
    for g in report.get("gallery", []):
        base, other = g["baseline"], g["model"]
        base_md, other_md = md(base), md(other)
        runs = g["runs"]
        several = max(runs.values()) > 1
        mean = " (mean over runs; boxes drawn: each model's run 0)" if several else ""
        lines += [
            f"## Gallery: where {other_md} and {base_md} differ most",
            "",
            f"True positives at IoU {g['iou']} per image among detections scoring at least "
            f"{g['score_threshold']}{mean}; panels: ground truth, {base_md}, {other_md}.",
            "",
        ]
        if not g["images"]:
            lines += [f"No image where {other_md}'s true positives differ from {base_md}'s.", ""]
            continue
        rows = [
            [
                f"{md(e['file_name'])} (id {e['image_id']})",
                str(e["num_gt"]),
                _fmt(e["true_positives"][base], 1 if runs[base] > 1 else 0),
                _fmt(e["true_positives"][other], 1 if runs[other] > 1 else 0),
                f"![{e['image_id']}]({quote(e['picture'])})",
            ]
            for e in g["images"]
        ]
        headers = ["image", "ground truth", f"TP {base_md}", f"TP {other_md}", "picture"]
        lines += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    return lines


def _csv_columns(report: dict) -> list[str]:
    cols = [
        "model",
        "baseline",
        "runs",
        "backbone_params",
        "backbone_gflops",
        "seconds_per_image",
        "num_detections",
        *METRIC_KEYS,
    ]
    cols += [f"delta_{k}" for k in METRIC_KEYS]
    cols += [f"{k}_between_run_sd" for k in ("AP", "AP50", "AP75")]
    cols += ["delta_calibrated", "delta_covers"]
    for k in ("AP", "AP50", "AP75"):
        cols += [
            f"{k}_ci_low",
            f"{k}_ci_high",
            f"delta_{k}_ci_low",
            f"delta_{k}_ci_high",
            f"delta_{k}_p",
        ]
    cats = list(next(iter(report["models"].values()))["per_category_AP"])
    return cols + [f"AP[{c}]" for c in cats]


def render_csv(report: dict) -> str:
    cols = _csv_columns(report)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for name, m in report["models"].items():
        row: dict[str, Any] = {"model": name, "baseline": int(name == report["baseline"])}
        row["runs"] = m.get("runs", 1)
        for k in ("AP", "AP50", "AP75"):
            row[f"{k}_between_run_sd"] = m.get("between_run_sd", {}).get(k)
        row["delta_calibrated"] = int(bool(m.get("delta_calibrated")))
        row["delta_covers"] = m.get("delta_covers")
        for c in ("backbone_params", "backbone_gflops", "seconds_per_image", "num_detections"):
            row[c] = m.get(c)
        for k in METRIC_KEYS:
            row[k] = m[k]
            row[f"delta_{k}"] = m["delta"][k]
        for k in ("AP", "AP50", "AP75"):
            lo_hi = m.get("ci", {}).get(k) or [None, None]
            d_lo_hi = m.get("delta_ci", {}).get(k) or [None, None]
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = lo_hi
            row[f"delta_{k}_ci_low"], row[f"delta_{k}_ci_high"] = d_lo_hi
            row[f"delta_{k}_p"] = m.get("delta_p", {}).get(k)
        for c, v in m["per_category_AP"].items():
            row[f"AP[{c}]"] = v
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def render_json(report: dict) -> str:
    return json.dumps(_json_safe(report), indent=2, allow_nan=False)


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


def _write_data(data: bytes) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


def _write_text(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(text, encoding="utf-8")

    return write


def write_outputs(
    report: dict,
    out_dir: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    pictures: dict[str, bytes] | None = None,
) -> list[Path]:
    """Write comparison.{md,json,csv,png} (and ``extra``: file name -> JSON-able object, and
    ``pictures``: the gallery's relative path -> PNG bytes) into ``out_dir``, all or nothing:
    every file goes to a temporary name beside its destination, and the renames happen only after
    all of them were written. Gallery pictures of an earlier report in ``out_dir`` that this one
    does not list are removed afterwards, so the folder shows one report.

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[Path], None]] = {
        "comparison.md": _write_text(render_markdown(report) + "\n"),
        "comparison.json": _write_text(render_json(report) + "\n"),
        "comparison.csv": _write_text(render_csv(report)),
        "comparison.png": lambda p: render_png(report, p),
    }
    for fname, obj in (extra or {}).items():
        writers[fname] = _write_text(json.dumps(_json_safe(obj)))
    for fname, data in (pictures or {}).items():
        writers[fname] = _write_data(data)
    with staged_files([out / fname for fname in writers]) as temps:
        for write, tmp in zip(writers.values(), temps):
            write(tmp)
    written = [out / fname for fname in writers]
    gallery = out / GALLERY_DIR
    if gallery.is_dir():
        for old in set(gallery.glob("*.png")) - set(written):
            old.unlink(missing_ok=True)
    return written
