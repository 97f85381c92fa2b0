"""``resnext-det complexity`` / ``tools/complexity.py``: parameters and GFLOPs of backbones, as
the paper counts them (one multiply-add = one FLOP).

Examples:
    resnext-det complexity --config-file configs/faster_rcnn_X_50_32x4d_FPN_1x.yaml
    resnext-det complexity --spec 50,1,64 --spec 50,32,4      # depth,C,d
    resnext-det complexity --sweep --depth 50                 # the paper's Table 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from ..complexity import complexity_rows, equal_complexity_sweep
from ..config import load_config
from ..errors import ConfigError
from ..spec import VARIANTS, ResNeXtSpec
from .common import command

__all__ = ["main", "parse_spec"]

# What the command counts on a real model and input (the count runs them): 4x the widest
# published group width (X-101 64x4d: 256), sides from the network's stride to 4096 pixels.
MAX_GROUP_WIDTH = 1024
MIN_SIDE, MAX_SIDE = 32, 4096


def parse_spec(text: str) -> ResNeXtSpec:
    """``DEPTH,C,D`` -> a :class:`ResNeXtSpec`; a usage error names the flag."""
    try:
        depth, c, d = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes DEPTH,C,D (e.g. 50,32,4); got {text!r}") from None
    if c < 1 or d < 1 or c * d > MAX_GROUP_WIDTH:
        raise argparse.ArgumentTypeError(
            f"C and D must be >= 1 with C*D at most {MAX_GROUP_WIDTH} (X-101 64x4d has 256); "
            f"got {text!r}"
        )
    try:
        return ResNeXtSpec(depth=depth, cardinality=c, width_per_group=d)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _input_side(text: str) -> int:
    """One side of --size: the network needs 32 pixels (its stride); the count builds a real
    input, so the side is bounded."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes an integer; got {text!r}") from None
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be from {MIN_SIDE} to {MAX_SIDE}; got {value}")
    return value


@command("complexity")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", action="append", default=[], help="a detectron2 config")
    parser.add_argument("--spec", action="append", default=[], type=parse_spec, help="DEPTH,C,D")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=list(VARIANTS),
        help="a named variant (repeatable)",
    )
    parser.add_argument("--sweep", action="store_true", help="equal-complexity C sweep")
    parser.add_argument("--depth", type=int, default=50, help="depth for --sweep")
    parser.add_argument(
        "--size",
        type=_input_side,
        nargs=2,
        default=(800, 1333),
        metavar=("H", "W"),
        help=f"detection input size, each side {MIN_SIDE} to {MAX_SIDE} (default 800 1333)",
    )
    args = parser.parse_args(argv)

    specs: dict[str, ResNeXtSpec] = {}
    for path in args.config_file:
        cfg = load_config(path)
        try:
            spec = ResNeXtSpec.from_config(cfg)
        except ValueError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        specs[f"{spec.name} ({Path(path).name})"] = spec
    for name in args.variant:
        specs[name] = VARIANTS[name].spec
    for spec in args.spec:
        specs[spec.name] = spec
    if args.sweep:
        specs.update(equal_complexity_sweep(args.depth))
    if not specs:
        specs = {name: VARIANTS[name].spec for name in ("R-50", "X-50-32x4d")}
    print(tabulate(complexity_rows(specs, tuple(args.size)), headers="keys", tablefmt="github"))
    return 0
