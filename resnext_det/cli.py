"""``resnext-det``: the tools as one console command with subcommands, for pip-only installs.

``resnext-det SUBCOMMAND ARGS...`` runs the subcommand's ``main(argv)`` from
:mod:`resnext_det.commands` (the scripts in ``tools/`` are thin wrappers around the same functions,
for a checkout); each sets up its own process and turns errors into one line
(:mod:`resnext_det.commands.common`).
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

# subcommand -> ("module:function taking argv", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": (
        "resnext_det.commands.compare:main",
        "COCO AP of several detectors side by side, with intervals (tools/compare_backbones.py)",
    ),
    "convert": (
        "resnext_det.commands.convert:main",
        "weights of any layout or name -> a detectron2-ready file (tools/convert_weights.py)",
    ),
    "demo": (
        "resnext_det.commands.demo:main",
        "the embedded default: generated data, R/X training runs, comparison, export",
    ),
    "sweep": (
        "resnext_det.commands.sweep:main",
        "the paper's experiment: error against cardinality at equal complexity, several runs "
        "per C, every C against C = 1 (tools/sweep.py)",
    ),
    "export": (
        "resnext_det.commands.export:main",
        "the trained backbone as torchvision/timm/detectron2 weights, TorchScript or ONNX "
        "(tools/export_backbone.py)",
    ),
    "train": (
        "resnext_det.commands.train:main",
        "train or evaluate a detector from a yacs config, seed runs too (tools/train_net.py)",
    ),
    "lazy-train": (
        "resnext_det.commands.lazy_train:main",
        "train or evaluate from a LazyConfig .py file (tools/lazyconfig_train_net.py)",
    ),
    "predict": (
        "resnext_det.commands.predict:main",
        "draw a detector's predictions on images; COCO results json (tools/predict.py)",
    ),
    "complexity": (
        "resnext_det.commands.complexity:main",
        "parameters and GFLOPs of backbones, as the paper counts them (tools/complexity.py)",
    ),
    "voc-to-coco": (
        "resnext_det.commands.voc:main",
        "Pascal VOC XML annotations -> a COCO json, every image checked (tools/voc_to_coco.py)",
    ),
}


def _usage() -> str:
    lines = ["usage: resnext-det SUBCOMMAND [ARGS...]  (resnext-det SUBCOMMAND --help)", ""]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"resnext-det: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, _, function = COMMANDS[name][0].partition(":")
    run = getattr(importlib.import_module(module), function)
    sys.argv = [f"resnext-det {name}", *rest]  # argparse's prog and detectron2's launcher
    result = run(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
