"""What every command shares: its process set-up and one translation of errors into a line.

Each command is a ``main(argv) -> int`` in this package, decorated with :func:`command`; the
``resnext-det`` console command (:mod:`resnext_det.cli`) and ``tools/*.py`` call it. The decorator
is the only place where a command touches its process before its own work: it hides the
third-party notices (:func:`resnext_det.runtime.quiet_third_party_notices`) and turns the errors a
user can cause (a missing or malformed file, a refused value, a busy output folder, a diverged
run) into ``PROG: error: MESSAGE`` on one line with exit status 2; an interrupt exits with 130.
Set ``RESNEXT_DET_TRACEBACK=1`` to get the traceback instead (for bug reports).

Threads and the allocator depend on the config, so a command sets them once it has read it:
:func:`configure_training_process` and :func:`configure_inference_process`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ResNeXtDetError
from ..runtime import configure_process, quiet_third_party_notices
from ..speed import InferenceSettings, cpu_training_settings
from ..training.launch import LaunchArgumentError, launch

__all__ = [
    "USER_ERRORS",
    "add_data_and_weights_arguments",
    "launch_from_args",
    "command",
    "configure_inference_process",
    "configure_training_process",
    "error_line",
]

# What a user's input or environment can cause; anything else is a bug and keeps its traceback.
# FloatingPointError: a diverged run (NonFiniteLossError names the run and the iteration).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ResNeXtDetError,
    OSError,
    ValueError,
    FloatingPointError,
    MemoryError,
)


def error_line(exc: BaseException) -> str:
    """``exc`` as one line: its message (notes added to it included), newlines folded."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    if isinstance(exc, MemoryError):
        text = f"out of memory ({text}); ask for less (fewer runs, smaller images)"
    notes = getattr(exc, "__notes__", None) or []
    return " ".join([*text.split(), *(" ".join(n.split()) for n in notes)])


def command(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a command's ``main(argv)``: quiet start, errors as one line, exit status."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            quiet_third_party_notices()
            try:
                result = main(argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except USER_ERRORS as exc:
                if os.environ.get("RESNEXT_DET_TRACEBACK"):
                    raise
                print(f"{prog}: error: {error_line(exc)}", file=sys.stderr)
                return 2
            return result if isinstance(result, int) else 0

        return run

    return wrap


def configure_training_process(cfg: Any) -> None:
    """The process part of ``cfg.CPU_TRAINING`` (threads, freed memory kept), for a command's
    process that trains on the CPU; nothing off the CPU or with ``CPU_TRAINING.ENABLED`` False."""
    settings = cpu_training_settings(cfg)
    if settings is not None:
        configure_process(
            num_threads=settings.num_threads, keep_freed_memory=settings.keep_freed_memory
        )


def configure_inference_process(
    cfg: Any | None = None, *, device: str = ""
) -> Callable[[Any], InferenceSettings]:
    """Keep freed memory for CPU inference (``MODEL.RESNEXT.KEEP_FREED_MEMORY`` of ``cfg``, the
    first model's where a command runs several) and return how each model runs: a function of a
    model's config giving its :class:`~resnext_det.speed.InferenceSettings` (its own
    ``MODEL.RESNEXT``), with the oneDNN 1x1 convolutions where this process runs one thread (the
    command owns it, so it knows)."""
    device = device or (cfg.MODEL.DEVICE if cfg is not None else "cpu")
    cpu = torch.device(device).type == "cpu"
    node = {} if cfg is None else cfg.MODEL.get("RESNEXT", {})
    configure_process(keep_freed_memory=cpu and bool(node.get("KEEP_FREED_MEMORY", True)))
    return functools.partial(
        InferenceSettings.from_config, onednn_1x1=cpu and torch.get_num_threads() == 1
    )


def add_data_and_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--register`` and ``--allow-partial-weights``: what the yacs and the LazyConfig trainers'
    command lines share beyond detectron2's ``default_argument_parser``."""
    parser.add_argument(
        "--register",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO-format dataset under NAME before building (repeatable), checked "
        "when registered; for yacs configs the same as adding [NAME, JSON, IMAGE_ROOT] to "
        "DATASETS.COCO_REGISTER",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show DEBUG lines on the console too (parameter-loading tables, the model); the "
        "log file in OUTPUT_DIR has them either way",
    )
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="--eval-only: score the model even if its weights leave parameters (heads) at "
        "their random initialisation (refused otherwise, naming them)",
    )


# detectron2's launcher flags (default_argument_parser), by the launch() argument each sets.
_LAUNCH_FLAGS = {
    "num_gpus_per_machine": "--num-gpus",
    "num_machines": "--num-machines",
    "machine_rank": "--machine-rank",
    "dist_url": "--dist-url",
}


def launch_from_args(
    main_func: Callable[[argparse.Namespace], Any],
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
) -> Any:
    """:func:`~resnext_det.training.launch` ``main_func(args)`` with the parsed launcher flags.

    An argument :func:`launch` refuses is a usage error (exit status 2) naming the flag.
    """
    try:
        return launch(
            main_func,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except LaunchArgumentError as exc:
        parser.error(f"{_LAUNCH_FLAGS.get(exc.argument, exc.argument)} {exc.problem}")
