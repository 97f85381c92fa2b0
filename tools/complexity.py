#!/usr/bin/env python3
"""Parameters and GFLOPs of backbones, as the paper counts them (one multiply-add = one FLOP).

Examples:
    tools/complexity.py --config-file configs/faster_rcnn_X_50_32x4d_FPN_1x.yaml
    tools/complexity.py --spec 50,1,64 --spec 50,32,4      # depth,C,d
    tools/complexity.py --sweep --depth 50                 # the paper's Table 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tabulate import tabulate  # noqa: E402

import resnext_det  # noqa: E402
from resnext_det.complexity import complexity_rows, equal_complexity_sweep  # noqa: E402


def parse_spec(text: str) -> resnext_det.ResNeXtSpec:
    try:
        depth, c, d = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--spec takes DEPTH,C,D (e.g. 50,32,4); got {text!r}") from None
    return resnext_det.ResNeXtSpec(depth=depth, cardinality=c, width_per_group=d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", action="append", default=[], help="a detectron2 config")
    parser.add_argument("--spec", action="append", default=[], help="DEPTH,C,D")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=list(resnext_det.VARIANTS),
        help="a named variant (repeatable)",
    )
    parser.add_argument("--sweep", action="store_true", help="equal-complexity C sweep")
    parser.add_argument("--depth", type=int, default=50, help="depth for --sweep")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(800, 1333),
        metavar=("H", "W"),
        help="detection input size",
    )
    args = parser.parse_args()

    specs: dict[str, resnext_det.ResNeXtSpec] = {}
    for path in args.config_file:
        cfg = resnext_det.load_config(path)
        spec = resnext_det.ResNeXtSpec.from_config(cfg)
        specs[f"{spec.name} ({Path(path).name})"] = spec
    for name in args.variant:
        specs[name] = resnext_det.VARIANTS[name].spec
    for text in args.spec:
        spec = parse_spec(text)
        specs[spec.name] = spec
    if args.sweep:
        specs.update(equal_complexity_sweep(args.depth))
    if not specs:
        specs = {name: resnext_det.VARIANTS[name].spec for name in ("R-50", "X-50-32x4d")}
    print(tabulate(complexity_rows(specs, tuple(args.size)), headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
