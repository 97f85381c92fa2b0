#!/usr/bin/env python3
"""Does batching pay on the CPU? The project's predictor model on photos one at a time against
the same model on batches of ``--batch`` photos, in one run.

The model is the one ``resnext-det predict`` runs (``Predictor`` with the command's inference
set-up, :func:`resnext_det.commands.common.configure_inference_process`), Faster R-CNN with the
benchmark's weights (``benchmarks.end_to_end``: detectron2's network, realistic BatchNorm
statistics).
Each photo is preprocessed as ``DefaultPredictor`` does (resized to the config's short side, 800);
then, per round and interleaved:

* ``one at a time``: ``model([photo])`` for each photo, as ``Predictor`` and ``--eval-only``
  (detectron2's test loader: batch 1) run;
* ``batches of B, equal sizes``: ``model(B copies of a photo)``: the best case for batching (no
  padding), what a wider matrix product could gain;
* ``batches of B, the folder``: ``model(B consecutive photos)``: what a folder gives, each batch
  padded by detectron2 to its largest photo.

Printed: seconds per photo (median over rounds), the ratio to one at a time, threads, CPU, load
average before and after (quiet verdict as the other benchmarks). The process keeps freed
memory and sets its threads as the project's commands do. It owns its process::

    .venv/bin/python benchmarks/batch_bench.py --images ../shared/data/raccoon/images \
        --num-images 4 --batch 2 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.end_to_end import _build, _images, _weights  # noqa: E402
from benchmarks.measure import load_average, quiet_verdict  # noqa: E402
from benchmarks.settings import BENCH_MODELS, BenchmarkInputError  # noqa: E402
from resnext_det.env import machine_info  # noqa: E402
from resnext_det.runtime import configure_process  # noqa: E402
from resnext_det.speed import autocast  # noqa: E402


def _inputs(predictor, bgr) -> dict:
    """``bgr`` as ``DefaultPredictor.__call__`` hands it to the model."""
    inner = predictor._predictor
    image = bgr[:, :, ::-1] if inner.input_format == "RGB" else bgr
    height, width = image.shape[:2]
    resized = inner.aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return {"image": tensor, "height": height, "width": width}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="X-50-32x4d", choices=list(BENCH_MODELS))
    parser.add_argument("--images", required=True, help="a folder of .jpg/.png photos")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--bf16", action="store_true", help="with bf16 autocast (the bf16 side)")
    parser.add_argument("--short-side", type=int, default=800, help="smaller for a smoke run")
    args = parser.parse_args(argv)
    if args.batch < 2 or args.num_images % args.batch:
        parser.error("--batch must be >= 2 and divide --num-images")
    loads = [load_average()]  # before this process's own work
    settings = configure_process(num_threads=args.threads, keep_freed_memory=True, quiet=True)
    from detectron2.data.detection_utils import read_image

    try:
        photos = _images(args.images, args.num_images)
    except BenchmarkInputError as exc:
        parser.error(f"--{exc.field}: {exc.detail}")
    if len(photos) % args.batch:
        parser.error(f"--images: {len(photos)} photos found; --batch {args.batch} must divide it")
    side = "project+bf16" if args.bf16 else "project"
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pth"
        _weights(args.model, 0, weights)
        predictor, model, inference = _build(side, args.model, str(weights), args.short_side)
    inputs = [_inputs(predictor, read_image(p, format="BGR")) for p in photos]
    b = args.batch
    variants = {
        "one at a time": [[x] for x in inputs],
        f"batches of {b}, equal sizes": [[x] * b for x in inputs[::b]],
        f"batches of {b}, the folder": [inputs[i : i + b] for i in range(0, len(inputs), b)],
    }

    def run(batches: list[list[dict]]) -> float:
        start = time.perf_counter()
        with torch.inference_mode(), autocast("cpu", inference.amp_dtype):
            for batch in batches:
                model(batch)
        return (time.perf_counter() - start) / sum(len(batch) for batch in batches)

    for batches in variants.values():  # warm-up
        run(batches)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, batches in variants.items():
            times[name].append(run(batches))
        loads.append(load_average())
    verdict = quiet_verdict(loads, own_threads=args.threads)

    print(
        f"Faster R-CNN {args.model}-FPN, the project's predictor model ({inference.describe()}), "
        f"{len(inputs)} photos of {args.images} resized to short side {args.short_side}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), {machine_info('cpu')['cpu']}; "
        f"freed memory {'kept' if settings['keep_freed_memory'] else 'returned'}; "
        f"{args.rounds} interleaved rounds after one warm-up"
    )
    print(
        f"load average before {loads[0][0] if loads[0] else float('nan'):.2f}, max "
        f"{verdict['max_load_1min']:.2f}: {'quiet' if verdict['quiet'] else 'NOT quiet'}\n"
    )
    print("| variant | s per photo (median) | x one at a time | rounds |")
    print("|---|---|---|---|")
    base = statistics.median(times["one at a time"])
    for name, ts in times.items():
        med = statistics.median(ts)
        spread = ", ".join(f"{t:.3f}" for t in ts)
        print(f"| {name} | {med:.3f} | {med / base:.2f}x | {spread} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
