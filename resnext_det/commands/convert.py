"""Convert ImageNet/detector weights of any supported layout into a detectron2-ready file.

    resnext-det convert resnext50_32x4d-1a0047aa.pth X-50-32x4d.pth
    resnext-det convert torchvision://resnext50_32x4d.IMAGENET1K_V1 X-50.pkl
    resnext-det convert R-50.pkl R-50-d2.pkl --preset msra

Reads torchvision, timm, Caffe2 (Detectron ``.pkl``) and detectron2 files (torch, safetensors or
pickle containers; the layout is read from the keys), or a name (``torchvision://NAME[.TAG]``,
``timm://NAME``, an ``https://`` URL: fetched into torch's hub cache and verified), writes ``OUT``
atomically with the weights' conventions recorded inside, and prints the config lines to use with
it: INPUT.FORMAT, MODEL.PIXEL_MEAN/STD, MODEL.RESNETS.STRIDE_IN_1X1 and the architecture (DEPTH,
NUM_GROUPS, WIDTH_PER_GROUP) inferred from the shapes.
"""

from __future__ import annotations

import argparse

from ..weights import FORMATS, PRESETS, convert_checkpoint
from .common import command


@command("convert_weights")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "src", help="weights to convert (.pth/.pt/.bin/.safetensors/.pkl, or a name or URL)"
    )
    parser.add_argument(
        "out", help="output file (.pkl: numpy pickle; .safetensors: safetensors; else torch.save)"
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="source layout (default: decided from the keys)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="input conventions, for files whose content cannot decide them",
    )
    args = parser.parse_args(argv)
    done = convert_checkpoint(args.src, args.out, format=args.format, preset=args.preset)
    weights = done.weights
    print(  # (convert_checkpoint refuses a file without a ResNet)
        f"# {args.src}: {weights.layout} layout ({weights.container}), "
        f"{weights.architecture.name}; "
        f"{done.written} tensors written -> {args.out}"
    )
    if done.left_out:
        shown = ", ".join(done.left_out[:8]) + (", ..." if len(done.left_out) > 8 else "")
        print(f"# left out: {len(done.left_out)} tensors that are not the ResNet's: {shown}")
    print(f"# conventions: {done.conventions.source if not args.preset else args.preset}")
    print(done.yaml)
    return 0
