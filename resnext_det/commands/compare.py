"""Compare detectors (e.g. ResNet-50 vs ResNeXt-50 32x4d) on COCO metrics, with honest intervals.

From models (each is run on the same images, timed, and its results json saved):

    resnext-det compare --model R50=configs/r50.yaml:out_r50/model_final.pth \\
        --model X50=configs/x50.yaml:out_x50/model_final.pth \\
        --coco-json val.json --image-root images/ --out output/compare

From results files (no model needed; --config adds backbone params/GFLOPs):

    resnext-det compare --gt val.json --results R50=r50.json --results X50=x50.json \\
        --out output/compare

Several training runs per model: repeat the name, once per run (models may have different
numbers of runs). The intervals then cover both the test images and the training runs:

    resnext-det compare --gt val.json \\
        --results R50=r_s0.json --results R50=r_s1.json --results R50=r_s2.json \\
        --results X50=x_s0.json --results X50=x_s1.json --results X50=x_s2.json --out cmp/

With one run per model the intervals cover test images only, and the report says so.
The first model (or --baseline) is the baseline. Writes comparison.{md,json,csv,png} to --out,
and, when the images are at hand (from models, or --image-root), a gallery of the images where
each model and the baseline differ most (OUT/gallery/*.png, listed in comparison.md); all only
when every model succeeded. Prints the table.
"""

from __future__ import annotations

import argparse
import logging
import re

from ..evaluation.bootstrap import MIN_RESAMPLES
from ..evaluation.report import check_out_dir
from ..speed import InferenceSettings
from .common import command, configure_inference_process


def _name_value(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"{flag} takes NAME=VALUE; got {text!r}")
    return name, value


def _model_spec(text: str) -> tuple[str, tuple[str, str | None]]:
    name, value = _name_value(text, "--model")
    # CONFIG[:WEIGHTS]; split after the yaml so that paths with ':' elsewhere still work.
    m = re.fullmatch(r"(.+?\.ya?ml)(?::(.+))?", value)
    if m:
        return name, (m.group(1), m.group(2))
    config, _, weights = value.rpartition(":") if ":" in value else (value, "", "")
    return name, (config, weights or None)


def _runs(pairs: list[tuple[str, object]]) -> dict[str, list]:
    """NAME=VALUE pairs -> {NAME: [VALUE, ...]} in first-seen order: a repeated name is one more
    training run of that model, never a replacement."""
    runs: dict[str, list] = {}
    for name, value in pairs:
        runs.setdefault(name, []).append(value)
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    models = p.add_argument_group("from models")
    models.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=CONFIG[:WEIGHTS]",
        help="a detector to run (repeat; a repeated NAME adds a training run of that model); "
        "WEIGHTS defaults to MODEL.WEIGHTS",
    )
    models.add_argument("--dataset", help="a registered data set name")
    models.add_argument("--coco-json", help="COCO json of the images to run on (with --image-root)")
    models.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    models.add_argument("--max-images", type=int, help="only the first N images")
    models.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="score a model even if its weights leave parameters (heads) randomly initialised",
    )
    models.add_argument(
        "--no-optimize",
        action="store_true",
        help="time the model as built, without optimize_for_inference",
    )
    res = p.add_argument_group("from results")
    res.add_argument("--gt", help="COCO ground-truth json")
    res.add_argument(
        "--results",
        action="append",
        default=[],
        metavar="NAME=RESULTS.json",
        help="a COCO results file (repeat; a repeated NAME adds a training run of that model)",
    )
    res.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=CONFIG",
        help="config of a results file's model, to report backbone params/GFLOPs",
    )
    res.add_argument(
        "--allow-missing-images",
        action="store_true",
        help="skip the partial-run check (a file with detections on at most half the images "
        "another covers); images without detections are scored as misses either way",
    )
    p.add_argument(
        "--image-root",
        help="directory the json's file_name are relative to: the images to run on (from "
        "models, with --coco-json) and to draw in the gallery (both modes)",
    )
    p.add_argument(
        "--gallery",
        type=int,
        default=8,
        metavar="N",
        help="the N images where each model and the baseline differ most, drawn into "
        "OUT/gallery/ and listed in comparison.md (needs --out and the images; 0: none; "
        "default 8)",
    )
    p.add_argument(
        "--gallery-threshold",
        type=float,
        default=0.5,
        metavar="T",
        help="the score a detection needs to be drawn and counted in the gallery (default 0.5)",
    )
    p.add_argument("--baseline", help="name of the baseline (default: the first)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help=f"bootstrap resamples over images (0: off; else at least {MIN_RESAMPLES}; "
        "default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--confidence", type=float, default=0.95, help="interval coverage")
    p.add_argument(
        "--flops-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input size for GFLOPs (default: the config's test size)",
    )
    p.add_argument("--out", help="output directory for comparison.{md,json,csv,png}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@command("compare_backbones")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from ..errors import BadFileError
    from ..evaluation import compare_models, compare_results
    from ..evaluation.report import format_table

    if bool(args.model) == bool(args.results):
        parser.error("give either --model (from models) or --gt with --results (from results)")
    if args.bootstrap and args.bootstrap < MIN_RESAMPLES:
        parser.error(
            f"--bootstrap {args.bootstrap}: use 0 (no intervals) or at least {MIN_RESAMPLES} "
            "resamples; fewer give intervals that can exclude their own point estimate"
        )
    try:
        check_out_dir(args.out)
    except OSError as exc:
        raise OSError(f"--out: {exc}") from None
    progress = not args.no_progress
    flops = tuple(args.flops_size) if args.flops_size else None
    try:
        if args.model:
            models = _runs([_model_spec(m) for m in args.model])
            if args.dataset:
                dataset = args.dataset
            elif args.coco_json and args.image_root:
                dataset = (args.coco_json, args.image_root)
            else:
                parser.error("from models needs --dataset or --coco-json with --image-root")
            report = compare_models(
                models,
                dataset,
                args.out,
                baseline=args.baseline,
                bootstrap=args.bootstrap,
                seed=args.seed,
                confidence=args.confidence,
                device=args.device,
                max_images=args.max_images,
                flops_size=flops,
                inference=InferenceSettings(optimize=False)
                if args.no_optimize
                else configure_inference_process(device=args.device),
                progress=progress,
                allow_partial_weights=args.allow_partial_weights,
                gallery=args.gallery,
                gallery_threshold=args.gallery_threshold,
            )
        else:
            if not args.gt:
                parser.error("from results needs --gt")
            results = _runs([_name_value(r, "--results") for r in args.results])
            info = {}
            if args.config:
                from resnext_det.evaluation.inference import config_complexity

                for name, configs in _runs(
                    [_name_value(c, "--config") for c in args.config]
                ).items():
                    if name not in results:
                        parser.error(
                            f"--config {name}=... names no --results model {list(results)}"
                        )
                    if len(set(configs)) > 1:
                        parser.error(f"--config {name}=... given twice, differently: {configs}")
                    info[name] = config_complexity(configs[0], flops)
            report = compare_results(
                args.gt,
                results,
                baseline=args.baseline,
                bootstrap=args.bootstrap,
                seed=args.seed,
                confidence=args.confidence,
                out_dir=args.out,
                model_info=info,
                allow_missing_images=args.allow_missing_images,
                images=args.image_root,
                gallery=args.gallery,
                gallery_threshold=args.gallery_threshold,
                progress=progress,
            )
    except KeyError as exc:  # a results or ground-truth record without a field it needs
        raise BadFileError(f"a record lacks the field {exc}") from None
    print(format_table(report))
    if args.out:
        print(f"\nwrote {', '.join(report['outputs'])}")
    return 0
