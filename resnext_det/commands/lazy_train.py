"""``resnext-det lazy-train`` / ``tools/lazyconfig_train_net.py``: train or evaluate a detector
from a LazyConfig ``.py`` file (:mod:`resnext_det.lazy`), detectron2's lazyconfig_train_net
command line.

Example::

    resnext-det lazy-train --config-file configs/lazy/faster_rcnn_X_50_32x4d_FPN_1x.py \\
        train.device=cpu train.max_iter=100 train.output_dir=out/lazy
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from detectron2.engine import default_argument_parser

from ..lazy import evaluate_lazy_weights, lazy_training_view, setup, train_lazy
from ..runtime import set_console_verbosity
from .common import (
    add_data_and_weights_arguments,
    command,
    configure_inference_process,
    configure_training_process,
    launch_from_args,
)

__all__ = ["argument_parser", "main", "run"]


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` (overrides ``key=value``) plus ``--register``."""
    parser = default_argument_parser(
        "A LazyConfig file is Python and runs when loaded: pass only files you trust. "
        "Overrides are key=value (hydra's syntax), e.g. train.max_iter=100; a key the config "
        "does not have is refused (naming the nearest), +key=value adds one."
    )
    add_data_and_weights_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> Mapping[str, Any] | None:
    """What each process runs: set up, its process settings, then train or ``--eval-only``."""
    cfg = setup(args)
    set_console_verbosity(getattr(args, "verbose", False))
    view = lazy_training_view(cfg)
    if args.eval_only:
        return evaluate_lazy_weights(
            cfg,
            resume=args.resume,
            allow_partial_weights=getattr(args, "allow_partial_weights", False),
            inference=configure_inference_process(view),
        )
    configure_training_process(view)
    return train_lazy(cfg, resume=args.resume)


@command("lazyconfig_train_net")
def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    print("Command Line Args:", args)
    launch_from_args(run, args, parser)
    return 0
