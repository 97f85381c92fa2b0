"""``resnext-det predict`` / ``tools/predict.py``: draw a trained detector's predictions on
images and write COCO results (detectron2 demo/demo.py's flags); :mod:`resnext_det.predict`."""

from __future__ import annotations

import argparse
import os

from ..predict import expand_inputs, parse_model_spec, prediction_config, run_predictions
from ..runtime import set_console_verbosity
from .common import command, configure_inference_process

__all__ = ["argument_parser", "main"]


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Draw a detector's predictions on images and write COCO results "
        "(detectron2 demo/demo.py's flags; weights through --opts MODEL.WEIGHTS PATH).",
    )
    parser.add_argument("--config-file", metavar="FILE", help="yacs config of the detector")
    parser.add_argument(
        "--input",
        nargs="+",
        action="extend",
        required=True,
        help="image files, folders (their images) or glob patterns ('imgs/*.jpg', quoted); "
        "repeated, all of them",
    )
    parser.add_argument(
        "--output",
        help="a picture file for one input (its suffix decides the format), else a folder for "
        "the pictures (each in its input's format) and json files; not an input, nor a folder "
        "that holds or lies inside an input (refused: a picture would replace its image). "
        "Without --output nothing is written and the detections are printed (detectron2's demo "
        "opens a window instead)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the detections drawn and written (default 0.5)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar="NAME=CFG:W",
        help="two models side by side (instead of --config-file): name, yacs config, weights; "
        "each model's results go to OUT/<name>/ (characters other than letters, digits and "
        "._- written as %%XX)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--verbose", action="store_true", help="DEBUG lines on the console too (loading tables)"
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs (e.g. MODEL.WEIGHTS out/model_final.pth)",
    )
    parser.add_argument(
        "--allow-partial-weights",
        action="store_true",
        help="draw a detector whose weights leave parameters (heads) at their random "
        "initialisation, instead of refusing it",
    )
    return parser


@command("predict")
def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    if bool(args.compare) == bool(args.config_file):
        parser.error("give --config-file CFG (one model) or --compare A=CFG:W B=CFG:W (two)")
    if not 0.0 <= args.confidence_threshold <= 1.0:
        parser.error(f"--confidence-threshold must be in [0, 1]; got {args.confidence_threshold}")
    from detectron2.utils.logger import setup_logger

    setup_logger(name="resnext_det")
    set_console_verbosity(args.verbose)
    inputs = expand_inputs(args.input)
    threshold = args.confidence_threshold
    if args.compare:
        specs = [parse_model_spec(s) for s in args.compare]
        if specs[0][0] == specs[1][0]:
            parser.error(f"--compare: two models need different names; got {specs[0][0]!r} twice")
        models = [
            (name, prediction_config(cfg, [*args.opts, "MODEL.WEIGHTS", weights], threshold))
            for name, cfg, weights in specs
        ]
    else:
        models = [("model", prediction_config(args.config_file, args.opts, threshold))]
    done = run_predictions(
        models,
        inputs,
        args.output,
        progress=not args.no_progress,
        allow_partial_weights=args.allow_partial_weights,
        inference=configure_inference_process(models[0][1]),
        input_folders=[p for p in args.input if os.path.isdir(p)],
    )
    if args.output is None:
        print("\n".join(done["text"]))
        print("(no --output: nothing written)")
    elif not done["results"]:
        print(f"picture: {done['images'][0]}")
    else:
        print(f"{len(done['images'])} pictures in {args.output}; results: ", end="")
        print(", ".join(str(p) for p in done["results"].values()))
    return 0
