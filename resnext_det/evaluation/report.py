"""Writers for a backbone comparison: markdown, json, csv, png and the terminal table.

Every writer takes the report dict that :func:`~resnext_det.evaluation.compare.compare_results`
returns. :func:`write_outputs` writes all files to temporary names in the output directory first
and renames them only when every one was written, so a failure leaves no half-written report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from ..io import staged_files
from .coco import METRIC_KEYS
from .figure import render_png
from .gallery import GALLERY_DIR
from .records import _json_safe, render_csv, render_json
from .text import (
    _LABELS,
    FINDING,
    IMAGES_ONLY,
    _fmt,
    _plain,
    check_model_names,
    markdown_text,
)

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
    ways = {name: m["inference"] for name, m in report["models"].items() if m.get("inference")}
    if len(set(ways.values())) == 1:
        text += f" Every model ran {next(iter(ways.values()))}."
    elif ways:
        text += (
            " Each model ran as its config says: "
            + "; ".join(f"{name} {way}" for name, way in ways.items())
            + " (detections differ by precision as well as by model)."
        )
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
