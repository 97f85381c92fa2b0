"""Export the backbone of a trained detector for other code: torchvision, timm, detectron2,
TorchScript or ONNX, with a metadata sidecar ``<out>.json``.

Examples:
    resnext-det export --config-file configs/X50.yaml --weights output/model_final.pth \\
        --format torchvision --out x50_torchvision.pth
    resnext-det export --config-file configs/X50.yaml --weights output/model_final.pth \\
        --format timm --container safetensors --out x50_timm.safetensors
    resnext-det export --config-file configs/X50.yaml --weights output/model_final.pth \\
        --format onnx --fpn --fold-bn --out x50_fpn.onnx
    # config overrides go last, as in detectron2's tools:
    resnext-det export ... --format detectron2 --out bb.pth MODEL.RESNETS.NUM_GROUPS 32
"""

from __future__ import annotations

import argparse
import logging

from ..export import CONTAINERS, FORMATS, export_backbone
from .common import command


@command("export_backbone")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    parser.add_argument("--weights", required=True, metavar="CHECKPOINT", help="checkpoint file")
    parser.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()),
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="file to write")
    parser.add_argument(
        "--container",
        choices=CONTAINERS,
        default=None,
        help="file type of the state-dict formats (default: safetensors if --out ends in "
        ".safetensors, else torch)",
    )
    parser.add_argument(
        "--fpn", action="store_true", help="include the FPN (detectron2/torchscript/onnx)"
    )
    parser.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold frozen/eval BatchNorm into the convs (torchscript/onnx)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Bad input (wrong config for the checkpoint, a format that cannot hold the model, a full
    # disk, weights not to be had) is one line from @command; nothing was written.
    result = export_backbone(
        args.config_file,
        args.weights,
        args.format,
        args.out,
        fpn=args.fpn,
        fold_bn=args.fold_bn,
        container=args.container,
        opts=args.opts,
    )
    print(result.summary())
    return 0
