"""``comparison.json`` and ``comparison.csv``: the report as data."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from .coco import METRIC_KEYS
from .text import csv_cell

__all__ = ["render_csv", "render_json"]


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
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
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
