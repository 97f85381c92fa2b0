"""The whole detector as its users run it: detectron2's ``DefaultPredictor`` against the
project's :class:`~resnext_det.predict.Predictor`, fp32-equal and bf16, on a folder of images.

Each side runs in its own child process, started with the process settings its tools use:

* ``detectron2``: ``DefaultPredictor`` on detectron2's built-in ResNet-FPN, as detectron2's
  ``demo/demo.py`` runs it (glibc's default allocator, fp32, NCHW, no folding);
* ``project``: ``Predictor`` on the project's ResNeXt-FPN with the settings of
  ``resnext-det predict`` (:func:`resnext_det.commands.common.configure_inference_process`: BN
  folded, channels_last, oneDNN 1x1 convolutions on one thread), in a process started with
  :data:`resnext_det.runtime.KEEP_FREED_MEMORY_ENV`, as the project's commands keep freed memory;
* ``project+bf16``: the same with ``MODEL.RESNEXT.INFERENCE_AMP_DTYPE bfloat16``.

The same weights on every side (detectron2's network with realistic BatchNorm statistics, fixed by
the seed, loaded by each side's own checkpointer), the same images (read once per process with
detectron2's reader, BGR, resized by each predictor to the config's short side, 800). The rounds
are interleaved: in each round every side runs the whole folder once, one process at a time; the
ratios are the medians of the per-round ratios. Every call is split into preprocessing (resize,
to tensor, normalise, pad), backbone (bottom-up), FPN, RPN, RoI heads and postprocessing (boxes
rescaled to the image, results to the CPU) by forward hooks (a few clock reads per call).
The detections are compared with detectron2's before timing (matched fractions at the fp32 and
at the bf16 tolerances of ``tests/test_inference_paths.py``), and so are detectron2's own on
another thread count: the yardstick of what a rounding change alone does to these detections.
The 1-minute load average is read around every round and turned into a quiet verdict
(:func:`benchmarks.measure.quiet_verdict`).

One image per call: ``DefaultPredictor`` takes one, and on the CPU batching does not pay
(``benchmarks/batch_bench.py``: batches of 2 take 1.02x the time per photo at equal sizes, 1.24x
for a folder's photos, padded to the largest; docs/benchmarks.md).

``tools/end_to_end_benchmark.py`` is the command line. This module is also the children's entry
point (``python -m benchmarks.end_to_end``, messages on stdin/stdout).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from .measure import load_average, quiet_verdict
from .process import _ROOT, _Pipe, allocator_env, child_pipe, freed_memory_probe, serve_commands
from .settings import BENCH_MODELS, BenchmarkInputError

__all__ = ["SIDES", "STAGES", "run_end_to_end", "end_to_end_markdown", "write_end_to_end"]

BASELINE = "detectron2"
# side -> (keeps freed memory, autocast dtype); the baseline first.
SIDES: dict[str, tuple[bool, str]] = {
    BASELINE: (False, ""),
    "project": (True, ""),
    "project+bf16": (True, "bfloat16"),
}
STAGES = ("preprocessing", "backbone", "fpn", "rpn", "roi_heads", "postprocessing")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --- in the child ---------------------------------------------------------------------------


class StageClock:
    """Forward hooks that stamp the time each stage of a ``GeneralizedRCNN`` starts and ends;
    :meth:`call` runs one predictor call and returns the seconds per stage."""

    def __init__(self, model: torch.nn.Module):
        self.stamps: dict[str, float] = {}
        parts = {
            "model": model,
            "backbone": model.backbone,
            "bottom_up": model.backbone.bottom_up,
            "rpn": model.proposal_generator,
            "roi": model.roi_heads,
        }
        for name, module in parts.items():
            module.register_forward_pre_hook(self._stamp(f"{name}_in"))
            module.register_forward_hook(self._stamp(f"{name}_out"))

    def _stamp(self, key: str):
        def hook(*_):
            self.stamps[key] = time.perf_counter()

        return hook

    def call(self, fn, *args) -> tuple[object, dict[str, float]]:
        self.stamps = {}
        start = time.perf_counter()
        out = fn(*args)
        end = time.perf_counter()
        s = self.stamps
        backbone = s["bottom_up_out"] - s["bottom_up_in"]
        return out, {
            "preprocessing": s["backbone_in"] - start,
            "backbone": backbone,
            "fpn": s["backbone_out"] - s["backbone_in"] - backbone,
            "rpn": s["rpn_out"] - s["rpn_in"],
            "roi_heads": s["roi_out"] - s["roi_in"],
            "postprocessing": end - s["roi_out"],
            "total": end - start,
        }


def _config(model_name: str, weights: str, project: bool, amp: str, short_side: int):
    from .variants import bench_config

    cfg = bench_config(model_name, torch.device("cpu"), "inference")
    cfg.MODEL.WEIGHTS = weights
    if short_side != cfg.INPUT.MIN_SIZE_TEST:  # a smoke run's small images
        cfg.INPUT.MAX_SIZE_TEST = round(
            cfg.INPUT.MAX_SIZE_TEST * short_side / cfg.INPUT.MIN_SIZE_TEST
        )
        cfg.INPUT.MIN_SIZE_TEST = short_side
    if project:
        cfg.MODEL.BACKBONE.NAME = "build_resnext_fpn_backbone"
        cfg.MODEL.RESNEXT.INFERENCE_AMP_DTYPE = amp
    return cfg


def _build(side: str, model_name: str, weights: str, short_side: int):
    """``(call, model, inference settings or None)``: ``call(bgr) -> Instances`` on the CPU."""
    keeps, amp = SIDES[side]
    if side == BASELINE:
        from detectron2.engine import DefaultPredictor

        predictor = DefaultPredictor(_config(model_name, weights, False, "", short_side))
        return (lambda bgr: predictor(bgr)["instances"].to("cpu")), predictor.model, None
    from resnext_det.commands.common import configure_inference_process
    from resnext_det.predict import Predictor

    cfg = _config(model_name, weights, True, amp, short_side)
    # What `resnext-det predict` does to its process and model (threads are the benchmark's).
    predictor = Predictor(cfg, inference=configure_inference_process(cfg))
    return predictor, predictor.model, predictor.inference


def layer_multiply_adds(
    layer: torch.nn.Module, x: torch.Tensor, out: torch.Tensor, *, direct: bool = False
) -> int:
    """Multiply-adds of one call of a convolution or linear layer on ``x`` that returned ``out``,
    by the algorithm the call used (Winograd's products where a ``WinogradConv2d`` computed so),
    or with ``direct`` as a direct convolution would do them."""
    from resnext_det.winograd import WinogradConv2d, winograd_multiply_adds

    if not direct and isinstance(layer, WinogradConv2d) and layer.uses_winograd(x):
        return winograd_multiply_adds(out, layer.in_channels)
    return out.numel() * layer.weight[0].numel()  # one input slice of the weight per output


def _multiply_adds(model: torch.nn.Module, call, bgrs: list) -> tuple[float, float]:
    """Mean multiply-adds per image of the detector's convolutions and fully connected layers
    (what runs at the GEMM peak; RoIAlign, NMS and element-wise work come on top), counted from
    the shapes of one pass over the folder: (by the algorithm each call used, as direct
    convolutions)."""
    used, direct = [0], [0]

    def count(m, inputs, out):
        used[0] += layer_multiply_adds(m, inputs[0], out)
        direct[0] += layer_multiply_adds(m, inputs[0], out, direct=True)

    layers = (torch.nn.Conv2d, torch.nn.Linear)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, layers)]
    try:
        for bgr in bgrs:
            call(bgr)
    finally:
        for h in handles:
            h.remove()
    return used[0] / len(bgrs), direct[0] / len(bgrs)


def _floor(model: torch.nn.Module, call, bgrs: list, dtype: str, rounds: int = 3) -> dict:
    """The arithmetic floor of one call: its multiply-adds (by the algorithm each layer used:
    Winograd's products where a ``WinogradConv2d`` ran) at this process's measured peak of
    ``dtype`` (:class:`benchmarks.measure.PeakProbe`, same threads), the time no implementation
    of these algorithms can beat on this machine."""
    from .measure import PeakProbe

    used, direct = _multiply_adds(model, call, bgrs)
    gmacs = used / 1e9
    probe = PeakProbe(torch.device("cpu"), dtypes=(dtype,))
    probe.warmup()
    for _ in range(rounds):
        probe.round()
    peak = probe.summary()[dtype]
    return {
        "gmacs_per_image": gmacs,
        "direct_gmacs_per_image": direct / 1e9,
        "dtype": dtype,
        "peak_gmacs_per_s": peak["gmacs_per_s"],
        "peak_kernel": peak["kernel"],
        "floor_seconds_per_image": gmacs / peak["gmacs_per_s"],
    }


def _detections(instances) -> dict[str, np.ndarray]:
    return {
        "boxes": instances.pred_boxes.tensor.float().numpy(),
        "scores": instances.scores.float().numpy(),
        "classes": instances.pred_classes.numpy(),
    }


def _serve(pipe: _Pipe, side: str, model_name: str, weights: str, images: list[str],
           threads: int, short_side: int) -> None:  # fmt: skip
    from detectron2.data.detection_utils import read_image

    from resnext_det.runtime import configure_process

    try:
        configure_process(num_threads=threads, quiet=True)
        probe = freed_memory_probe()
        call, model, settings = _build(side, model_name, weights, short_side)
        clock = StageClock(model)
        bgrs = [read_image(p, format="BGR") for p in images]
        pipe.send(("ok", {"probe": probe, "settings": repr(settings), "pid": os.getpid()}))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        pipe.send(("error", traceback.format_exc()))
        return

    def folder(keep: bool = False):
        times, dets = [], []
        for bgr in bgrs:
            out, t = clock.call(call, bgr)
            times.append(t)
            if keep:
                dets.append(_detections(out))
        return times, dets

    def detections_on(threads: int) -> list:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return folder(keep=True)[1]
        finally:
            torch.set_num_threads(before)

    commands = {
        "warm": lambda n: [folder() for _ in range(n)] and None,
        "round": lambda: folder()[0],
        "detections": lambda: folder(keep=True)[1],
        "detections_on": detections_on,
        "floor": lambda: _floor(model, call, bgrs, SIDES[side][1] or "float32"),
    }
    serve_commands(pipe, commands)


def _child_main() -> None:
    pipe = child_pipe()
    with contextlib.suppress(EOFError):
        _serve(pipe, **pipe.recv())


# --- in the parent --------------------------------------------------------------------------


class _Side:
    """One side's child process, started with its allocator setting."""

    def __init__(self, side: str, start: dict):
        env = allocator_env(SIDES[side][0])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        self.name = side
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.end_to_end"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_ROOT,
        )  # fmt: skip
        self.pipe = _Pipe(self.process.stdout, self.process.stdin)
        self.pipe.send(dict(side=side, **start))
        self.info = self._receive("start")

    def _receive(self, what: str):
        try:
            status, value = self.pipe.recv()
        except EOFError as exc:
            raise RuntimeError(
                f"end-to-end benchmark: {self.name}'s process died during {what} "
                f"(exit code {self.process.wait()}; out of memory?)"
            ) from exc
        if status == "error":
            raise RuntimeError(f"end-to-end benchmark: {self.name} failed on {what}:\n{value}")
        return value

    def call(self, *command):
        self.pipe.send(command)
        return self._receive(command[0])

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.pipe.send(("stop",))
                self.process.stdin.close()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match_fraction(got: list[dict], ref: list[dict], *, box_atol: float | None = None,
                   min_iou: float = 0.5, score_atol: float = 0.1) -> float:  # fmt: skip
    """The fraction of ``ref``'s detections (all images) that ``got`` has, each used once: same
    class, score within ``score_atol`` and corners within ``box_atol`` px (or IoU >= ``min_iou``
    where ``box_atol`` is None), the candidate of largest IoU taken. 1.0 when ``ref`` has none."""
    total = matched = 0
    for g, r in zip(got, ref):
        used = np.zeros(len(g["scores"]), bool)
        iou = _iou(r["boxes"], g["boxes"]) if len(g["scores"]) and len(r["scores"]) else None
        for i in range(len(r["scores"])):
            total += 1
            if iou is None:
                continue
            ok = (g["classes"] == r["classes"][i]) & ~used
            ok &= np.abs(g["scores"] - r["scores"][i]) <= score_atol
            if box_atol is None:
                ok &= iou[i] >= min_iou
            else:
                ok &= np.abs(g["boxes"] - r["boxes"][i]).max(axis=1) <= box_atol
            if ok.any():  # the best-overlapping candidate, so that a near one is not used up
                used[np.flatnonzero(ok)[np.argmax(iou[i][ok])]] = True
                matched += 1
    return matched / total if total else 1.0


def _images(folder: str | os.PathLike, num_images: int) -> list[str]:
    if not Path(folder).is_dir():
        raise BenchmarkInputError("images", f"{folder}: not a folder")
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise BenchmarkInputError("images", f"{folder}: no {', '.join(IMAGE_SUFFIXES)} files")
    return [str(p) for p in paths[:num_images]]


def _weights(model_name: str, seed: int, path: Path) -> None:
    from detectron2.modeling import build_model

    from .variants import bench_config, realistic_norms

    torch.manual_seed(seed)
    model = realistic_norms(
        build_model(bench_config(model_name, torch.device("cpu"), "inference")), seed
    )
    torch.save({"model": model.state_dict()}, path)


def _summary(rounds: list[dict[str, list[dict]]], sides: list[str]) -> dict:
    """Per side: seconds per image (median over rounds of the round's mean), images/s, each
    stage's ms per image, and each ratio to the baseline (median of the per-round ratios)."""
    out = {}
    for side in sides:
        per_round = [
            {k: statistics.fmean(t[k] for t in r[side]) for k in (*STAGES, "total")} for r in rounds
        ]
        total = [p["total"] for p in per_round]
        base = [
            {k: statistics.fmean(t[k] for t in r[BASELINE]) for k in (*STAGES, "total")}
            for r in rounds
        ]
        out[side] = {
            "seconds_per_image": statistics.median(total),
            "seconds_per_image_rounds": total,
            "images_per_second": 1.0 / statistics.median(total),
            "stages_ms_per_image": {
                k: 1e3 * statistics.median(p[k] for p in per_round) for k in STAGES
            },
            "ratio_to_detectron2": statistics.median(
                p["total"] / b["total"] for p, b in zip(per_round, base)
            ),
            "stage_ratios_to_detectron2": {
                k: statistics.median(p[k] / max(b[k], 1e-9) for p, b in zip(per_round, base))
                for k in STAGES
            },
        }
    return out


def run_end_to_end(
    *,
    models: list[str] | tuple[str, ...] = ("X-50-32x4d", "X-101-32x8d"),
    images: str | os.PathLike,
    num_images: int = 8,
    rounds: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    short_side: int = 800,
    sides: list[str] | tuple[str, ...] = tuple(SIDES),
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Time ``sides`` of each model on the first ``num_images`` images of ``images`` in
    ``rounds`` interleaved rounds (after ``warmup`` untimed passes of the folder per side), each
    image resized by the predictors to ``short_side`` (the config's 800, longer side at most 1333;
    less only for a smoke run).

    Returns:
        a json-ready dict: ``machine``, ``config``, ``load_average_*``, ``quiet``, and per model
        ``sides`` (see :func:`_summary`), ``processes`` (each child's measured allocator and
        inference settings), ``agreement`` (matched fractions with detectron2's detections,
        detectron2's own on another thread count first), ``detections_per_image``.
    """
    from resnext_det.env import machine_info

    unknown = [m for m in models if m not in BENCH_MODELS]
    if unknown:
        raise BenchmarkInputError("models", f"unknown {unknown}; known: {list(BENCH_MODELS)}")
    sides = [BASELINE, *[s for s in sides if s != BASELINE]]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        raise BenchmarkInputError("sides", f"unknown {unknown}; known: {list(SIDES)}")
    for name, value in (("rounds", rounds), ("num-images", num_images)):
        if value < 1:
            raise BenchmarkInputError(name, f"must be >= 1; got {value}")
    threads = threads or torch.get_num_threads()
    other_threads = 2 if threads == 1 else 1  # the yardstick's: detectron2's rounding changed
    yardstick = f"{BASELINE} on {other_threads} thread(s)"
    files = _images(images, num_images)
    loads = [load_average()]
    report: dict = {
        "machine": machine_info("cpu") | {"threads": threads},
        "config": {
            "models": list(models),
            "images": str(images),
            "image_files": files,
            "rounds": rounds,
            "warmup": warmup,
            "threads": threads,
            "seed": seed,
            "short_side": short_side,
            "sides": sides,
        },  # fmt: skip
        "models": {},
    }
    for model_name in models:
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "weights.pth"
            _weights(model_name, seed, weights)
            start = dict(model_name=model_name, weights=str(weights), images=files,
                         threads=threads, short_side=short_side)  # fmt: skip
            procs: list[_Side] = []
            try:
                for side in sides:
                    procs.append(_Side(side, start))
                dets = {}
                for p in procs:  # also the first, untimed pass
                    dets[p.name] = p.call("detections")
                    if warmup > 1:
                        p.call("warm", warmup - 1)
                dets[yardstick] = procs[0].call("detections_on", other_threads)
                timed = []
                for i in range(rounds):
                    timed.append({p.name: p.call("round") for p in procs})
                    loads.append(load_average())
                    if progress:
                        line = ", ".join(
                            f"{s} {statistics.fmean(t['total'] for t in v):.3f} s/image"
                            for s, v in timed[-1].items()
                        )
                        print(f"{model_name} round {i + 1}/{rounds}: {line}", file=sys.stderr)
                floors = {p.name: p.call("floor") for p in procs[1:]}
            finally:
                for p in procs:
                    p.close()
        ref = dets[BASELINE]
        base_s = statistics.median(statistics.fmean(t["total"] for t in r[BASELINE]) for r in timed)
        for f in floors.values():
            f["floor_ratio_to_detectron2"] = f["floor_seconds_per_image"] / base_s
        report["models"][model_name] = {
            "sides": _summary(timed, sides),
            "processes": {p.name: p.info for p in procs},
            "agreement": {
                side: {
                    # tests/test_inference_paths.py's tolerances, scaled to 800-pixel images.
                    "fp32_matched": match_fraction(dets[side], ref, box_atol=0.1, score_atol=1e-3),
                    "bf16_matched": match_fraction(dets[side], ref, min_iou=0.5, score_atol=0.1),
                }
                for side in [yardstick, *sides[1:]]
            },
            "detections_per_image": {
                side: statistics.fmean(len(d["scores"]) for d in dets[side]) for side in sides
            },
            "floors": floors,
            "timed_rounds": timed,
        }
    loads.append(load_average())
    report |= {
        "load_average_before": loads[0],
        "load_average_after": loads[-1],
        "load_average_samples": [v for v in loads if v],
        "quiet": quiet_verdict(loads, own_threads=threads),
    }
    return report


def end_to_end_markdown(report: dict, command: str = "") -> str:
    m, q = report["machine"], report["quiet"]
    lines = [
        "# End to end: DefaultPredictor against the project's Predictor",
        "",
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} cores; avx512_bf16 "
        f"{m.get('avx512_bf16')}, amx_bf16 {m.get('amx_bf16')}), torch {m.get('torch')}, "
        f"{report['config']['threads']} threads per process.",
        f"Load average (1 min): before {report['load_average_before']}, after "
        f"{report['load_average_after']}, max {q['max_load_1min']}: "
        f"**{'quiet' if q['quiet'] else 'NOT quiet: the figures are not to be quoted'}** "
        f"(limit {q['limit']} + the run's own {q['own_threads']} threads).",
        f"Images: {len(report['config']['image_files'])} of {report['config']['images']} "
        f"(each resized by its predictor to short side {report['config']['short_side']}), "
        f"{report['config']['rounds']} "
        "interleaved rounds; ratios are medians of per-round ratios.",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    for model_name, r in report["models"].items():
        sides = r["sides"]
        lines += ["", f"## Faster R-CNN {model_name}-FPN", "",
                  "| side | s/image | images/s | x detectron2 | "
                  + " | ".join(f"{s} ms" for s in STAGES) + " |",
                  "|---" * (4 + len(STAGES)) + "|"]  # fmt: skip
        for side, s in sides.items():
            stages = " | ".join(
                f"{s['stages_ms_per_image'][k]:.0f} ({s['stage_ratios_to_detectron2'][k]:.2f}x)"
                for k in STAGES
            )
            lines.append(
                f"| {side} | {s['seconds_per_image']:.3f} | {s['images_per_second']:.2f} | "
                f"{s['ratio_to_detectron2']:.2f}x | {stages} |"
            )
        lines += ["", "Detections matched with detectron2's (fp32 tolerance: same class, corners "
                  "within 0.1 px, score within 1e-3; bf16 tolerance: IoU >= 0.5, score within "
                  "0.1). A line for detectron2 on another thread count, where it is, is the "
                  "yardstick: its own predictor with only its rounding changed (random weights "
                  "give runs of equal scores on boxes a stride apart, and which of those tied "
                  "boxes survive depends on rounding):", ""]  # fmt: skip
        for side, a in r["agreement"].items():
            lines.append(
                f"- {side}: {a['fp32_matched']:.1%} at the fp32 tolerance, "
                f"{a['bf16_matched']:.1%} at the bf16 tolerance"
            )
        lines += ["", "Arithmetic floor (the convolutions' and fc layers' multiply-adds per image, "
                  "by the algorithm each call used (Winograd F(4x4, 3x3) counts its products), "
                  "at the peak measured in the same process: no implementation of these "
                  "algorithms is faster on this machine):", ""]  # fmt: skip
        for side, f in r.get("floors", {}).items():
            direct = f.get("direct_gmacs_per_image", f["gmacs_per_image"])
            lines.append(
                f"- {side}: {f['gmacs_per_image']:.1f} GMAC ({direct:.1f} as direct convolutions) "
                f"at {f['peak_gmacs_per_s']:.0f} GMAC/s "
                f"({f['dtype']}, {f['peak_kernel']}) = {f['floor_seconds_per_image']:.3f} s/image "
                f"= **{f['floor_ratio_to_detectron2']:.2f}x** detectron2's time"
            )
        lines.append("")
        dpi = ", ".join(f"{k} {v:.1f}" for k, v in r["detections_per_image"].items())
        lines.append(f"- detections per image: {dpi}")
        for side, info in r["processes"].items():
            lines.append(
                f"- {side} process: freed memory {info['probe']['freed_memory']} (measured), "
                f"settings {info['settings']}"
            )
    return "\n".join(lines) + "\n"


def write_end_to_end(report: dict, output: str | os.PathLike, command: str = "") -> None:
    """``output.json`` and ``output.md``, each written atomically."""
    from resnext_det.io import write_json_atomic, write_text_atomic

    write_json_atomic(f"{output}.json", report | {"command": command}, indent=1)
    write_text_atomic(f"{output}.md", end_to_end_markdown(report, command))


if __name__ == "__main__":
    _child_main()
