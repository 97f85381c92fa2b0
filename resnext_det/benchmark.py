"""Benchmark: this project's settings against detectron2's built-in ResNet (and torchvision's).

The same inputs and weights for every setting, timed in interleaved rounds, for the backbone alone
(forward, backward) and for Faster R-CNN FPN (train, inference); the speed-ups themselves live in
:mod:`resnext_det.speed`. ``tools/benchmark.py`` is the command line, ``docs/benchmarks.md`` the
results.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from .io import atomic_write, write_json_atomic, write_text_atomic
from .speed import (
    autocast,
    compile_module,
    max_relative_error,
    optimize_for_inference,
    to_channels_last,
)

__all__ = [
    "BENCH_MODELS",
    "TASKS",
    "SETTINGS",
    "DEFAULT_SETTINGS",
    "Setting",
    "run_benchmark",
    "benchmark_markdown",
    "plot_benchmark",
    "write_benchmark",
]

logger = logging.getLogger(__name__)

# name -> (depth, cardinality, width_per_group); torchvision's constructor of the same network.
BENCH_MODELS: dict[str, tuple[int, int, int]] = {
    "R-50": (50, 1, 64),
    "X-50-32x4d": (50, 32, 4),
    "R-101": (101, 1, 64),
    "X-101-32x8d": (101, 32, 8),
    "X-101-64x4d": (101, 64, 4),
}
TORCHVISION_MODELS = {
    "R-50": "resnet50",
    "X-50-32x4d": "resnext50_32x4d",
    "R-101": "resnet101",
    "X-101-32x8d": "resnext101_32x8d",
    "X-101-64x4d": "resnext101_64x4d",
}
# forward / backward: the backbone (stem + res2..res5) alone; train / inference: Faster R-CNN FPN.
TASKS = ("forward", "backward", "train", "inference")
BASELINE = "detectron2"


@dataclass(frozen=True)
class Setting:
    """One way of running a model.

    ``amp="auto"`` is training AMP as ``SOLVER.AMP.ENABLED`` runs it: float16 (with a gradient
    scaler) on CUDA, bfloat16 on CPU. ``optimize`` is :func:`optimize_for_inference` (inference
    tasks only: a folded model cannot train).
    """

    name: str
    source: str = "project"  # "project", "detectron2" (build_resnet_backbone) or "torchvision"
    block_form: str = "grouped"
    channels_last: bool = False
    optimize: bool = False
    amp: str = ""
    compile: bool = False

    def applies_to(self, task: str) -> bool:
        training = task in ("backward", "train")
        if self.optimize and training:
            return False
        if self.amp == "auto" and not training:
            return False  # inference settings name their dtype
        if self.amp in ("bfloat16", "float16") and training:
            return False  # training AMP is SOLVER.AMP.ENABLED: "auto"
        # torchvision's detectors are other architectures, not comparable: backbone tasks only.
        return self.source != "torchvision" or task in ("forward", "backward")

    def amp_dtype(self, device: torch.device) -> str:
        if self.amp == "auto":
            return "float16" if device.type == "cuda" else "bfloat16"
        return self.amp


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(BASELINE, source="detectron2"),
        Setting("torchvision", source="torchvision"),
        Setting("grouped"),
        Setting("aggregated", block_form="aggregated"),
        Setting("concat", block_form="concat"),
        Setting("channels_last", channels_last=True),
        Setting("optimized", optimize=True),
        Setting("optimized+bf16", optimize=True, amp="bfloat16"),
        Setting("optimized+fp16", optimize=True, amp="float16"),
        Setting("optimized+compile", optimize=True, compile=True),
        Setting("optimized+bf16+compile", optimize=True, amp="bfloat16", compile=True),
        Setting("amp", amp="auto"),
        Setting("channels_last+amp", channels_last=True, amp="auto"),
        Setting("channels_last+compile", channels_last=True, compile=True),
    )
}
DEFAULT_SETTINGS = (
    BASELINE,
    "torchvision",
    "grouped",
    "channels_last",
    "optimized",
    "optimized+bf16",
    "amp",
    "channels_last+amp",
)


def _realistic_norms(model: nn.Module, seed: int) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms (fixed by ``seed``), as a
    trained network has: with detectron2's identity-initialised FrozenBN, folding and fp32/AMP
    comparisons would pass trivially."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) and m.running_mean is not None:
            n = m.running_mean.numel()
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _bench_config(model_name: str, device: torch.device, task: str):
    """detectron2's own Base-RCNN-FPN config for ``model_name``, with the ResNeXt conventions."""
    from detectron2 import model_zoo

    from .config import load_config

    if model_name not in BENCH_MODELS:
        raise ValueError(f"--models: unknown model {model_name!r}; known: {list(BENCH_MODELS)}")
    cfg = load_config(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP = BENCH_MODELS[model_name]
    # Stride in the 3x3 (Caffe2/torchvision ResNeXt convention) for every model, so that one set
    # of weights serves detectron2's, the project's and torchvision's network alike.
    r.STRIDE_IN_1X1 = False
    cfg.MODEL.DEVICE = str(device)
    if task in ("forward", "backward"):
        cfg.MODEL.BACKBONE.FREEZE_AT = 0  # backward through the whole backbone
    return cfg


@dataclass
class _Variant:
    setting: Setting
    model: nn.Module
    step: Callable[[], object]  # one timed iteration
    check: Callable[[], object]  # outputs compared with the baseline's (fp32 where it can)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _backbone_variant(
    setting: Setting, task: str, reference: nn.Module, cfg, x: torch.Tensor
) -> _Variant:
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    from .backbone import build_resnext_backbone

    device = x.device
    state = reference.state_dict()
    if setting.source == "detectron2":
        model = build_resnet_backbone(cfg, ShapeSpec(channels=3))
        model.load_state_dict(state)
    elif setting.source == "torchvision":
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor
        from torchvision.ops import FrozenBatchNorm2d as TVFrozenBN

        from .weights.torchvision import detectron2_to_torchvision

        name = next(
            k
            for k, v in BENCH_MODELS.items()
            if v
            == (
                cfg.MODEL.RESNETS.DEPTH,
                cfg.MODEL.RESNETS.NUM_GROUPS,
                cfg.MODEL.RESNETS.WIDTH_PER_GROUP,
            )
        )
        net = getattr(torchvision.models, TORCHVISION_MODELS[name])(norm_layer=TVFrozenBN)
        missing, unexpected = net.load_state_dict(detectron2_to_torchvision(state), strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise RuntimeError(f"torchvision {name}: weights do not match: {missing} {unexpected}")
        nodes = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}
        model = create_feature_extractor(net, return_nodes=nodes)
    else:
        cfg = cfg.clone()
        cfg.MODEL.RESNEXT.BLOCK_FORM = setting.block_form
        cfg.MODEL.RESNEXT.CHANNELS_LAST = setting.channels_last
        model = build_resnext_backbone(cfg, ShapeSpec(channels=3))
        model.load_state_dict(state)
    model.to(device)
    if setting.channels_last:
        to_channels_last(model)
    amp = setting.amp_dtype(device)
    if task == "forward":
        model.eval()
        if setting.optimize:
            optimize_for_inference(model)
    else:
        model.train()
    if setting.compile:
        compile_module(model)

    def forward():
        with torch.inference_mode(), autocast(device, amp):
            return model(x)

    def backward():
        model.zero_grad(set_to_none=True)
        with autocast(device, amp):
            out = model(x)
        sum(v.float().sum() for v in out.values()).backward()

    def input_gradient():
        xg = x.clone().requires_grad_(True)
        with autocast(device, amp):
            out = model(xg)
        sum(v.float().sum() for v in out.values()).backward()
        model.zero_grad(set_to_none=True)
        return xg.grad

    if task == "forward":
        return _Variant(setting, model, forward, lambda: _float(forward()))
    return _Variant(setting, model, backward, input_gradient)


def _float(outputs):
    if isinstance(outputs, dict):
        return {k: v.float() for k, v in outputs.items()}
    return outputs.float()


def _detector_inputs(n: int, size: tuple[int, int], device: torch.device, seed: int) -> list:
    """``n`` synthetic images (uint8 values, as detectron2's mapper gives them), 5 boxes each."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    h, w = size
    inputs = []
    for _ in range(n):
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (torch.rand(5, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1).to(device))
        inst.gt_classes = torch.randint(0, 80, (5,), generator=g).to(device)
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
        inputs.append({"image": image.to(device), "height": h, "width": w, "instances": inst})
    return inputs


def _detector_variant(
    setting: Setting, task: str, reference: nn.Module, cfg, inputs: list
) -> _Variant:
    import itertools

    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    device = torch.device(cfg.MODEL.DEVICE)
    cfg = cfg.clone()
    if setting.source == "project":
        cfg.MODEL.BACKBONE.NAME = "build_resnext_fpn_backbone"
        cfg.MODEL.RESNEXT.BLOCK_FORM = setting.block_form
        cfg.MODEL.RESNEXT.CHANNELS_LAST = setting.channels_last
    model = build_model(cfg)
    model.load_state_dict(reference.state_dict())
    if setting.channels_last:
        to_channels_last(model)
    amp = setting.amp_dtype(device)
    if task == "inference":
        model.eval()
        if setting.optimize:
            optimize_for_inference(model)
    if setting.compile:
        compile_module(model.backbone)

    def features():
        with torch.inference_mode(), autocast(device, amp):
            return _float(model.backbone(model.preprocess_image(inputs).tensor))

    if task == "inference":

        def infer():
            with torch.inference_mode(), autocast(device, amp):
                return model(inputs)

        return _Variant(setting, model, infer, features)

    # lr 0: every iteration does the full update but the weights (and so the work) stay the same.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)
    data = itertools.repeat(inputs)
    if setting.source == "detectron2":
        trainer = SimpleTrainer(model, data, optimizer)
    else:
        from .training.trainer import GuardedTrainer

        trainer = GuardedTrainer(model, data, optimizer, amp=bool(amp), device=str(device))

    def train_step():
        with EventStorage(0):
            trainer.run_step()

    def rpn_losses():
        # The RPN's losses: its anchor sampling depends on the ground truth and the seed only,
        # while the RoI heads sample from proposals, which any rounding difference reorders.
        torch.manual_seed(0)
        with EventStorage(0), autocast(device, amp):
            loss_dict = model(inputs)
        return {k: v.detach().float() for k, v in loss_dict.items() if k.startswith("loss_rpn")}

    return _Variant(setting, model, train_step, rpn_losses)


def _peak_memory(device: torch.device, fn: Callable[[], object]) -> tuple[float | None, str]:
    """Peak memory of one call of ``fn`` in MiB above what was allocated before, and how it was
    measured."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_allocated"
    # CPU: torch keeps no allocator statistics and the process's RSS high-water mark does not see
    # a call that reuses pages freed (but kept by malloc) in an earlier one, so replay the
    # profiler's allocation and free events in time order and take the running total's maximum.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    total = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        total += event.self_cpu_memory_usage  # "[memory]" events are frees outside any op
        peak = max(peak, total)
    return peak / 2**20, "cpu_profiler_allocations"


def _quantile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q))


def _machine(device: torch.device) -> dict:
    import os
    import platform

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        text = f.read()
        info["avx512_bf16"] = "avx512_bf16" in text
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.startswith("model name")
        )
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _load_average() -> list[float] | None:
    import os

    with contextlib.suppress(OSError, AttributeError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def _count_gmacs(task: str, reference: nn.Module, size: tuple[int, int], inputs: list | None):
    """Multiply-adds per image (fvcore counts one multiply-add as one flop), and what they are."""
    if task in ("forward", "backward"):
        from .complexity import count_complexity

        gmacs = count_complexity(reference, size).gflops
        if task == "backward":
            # The usual convention: the backward pass costs twice the forward (grads of inputs
            # and of weights).
            return 3 * gmacs, "3x forward (count_complexity)"
        return gmacs, "count_complexity"
    # detectron2.utils.analysis.FlopCountAnalysis would do this, but importing it needs caffe2
    # (detectron2.export); a wrapper from one image tensor to the raw detections serves fvcore.
    from fvcore.nn import FlopCountAnalysis

    class _ImageToDetections(nn.Module):
        def __init__(self, detector: nn.Module):
            super().__init__()
            self.detector = detector

        def forward(self, image: torch.Tensor):
            out = self.detector.inference([{"image": image}], do_postprocess=False)[0]
            return out.pred_boxes.tensor, out.scores

    was_training = reference.training
    reference.eval()
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(_ImageToDetections(reference), inputs[0]["image"].cpu())
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            # As count_complexity: convolutions and fully connected layers (RoI heads included).
            ops = analysis.by_operator()
            gmacs = sum(ops.get(k, 0) for k in ("conv", "linear", "addmm", "matmul")) / 1e9
    finally:
        reference.train(was_training)
    if task == "train":
        return 3 * gmacs, "3x inference forward (fvcore)"
    return gmacs, "inference forward (fvcore)"


def run_benchmark(
    *,
    models: list[str] | tuple[str, ...] = ("X-50-32x4d",),
    tasks: list[str] | tuple[str, ...] = ("forward",),
    settings: list[str] | tuple[str, ...] = DEFAULT_SETTINGS,
    device: str = "cpu",
    size: tuple[int, int] = (800, 1216),
    batch: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    clock: str = "wall",
    progress: bool = True,
) -> dict:
    """Time ``settings`` of each model on each task, interleaved, against detectron2's ResNet.

    For each (model, task) every variant is built from the same weights (detectron2's
    ``build_resnet_backbone`` / ``build_resnet_fpn_backbone`` with non-trivial norm statistics,
    loaded into the others), warmed up ``warmup`` times, checked against the baseline's outputs
    (:func:`max_relative_error`; backward: the input gradient; train: the losses), measured for
    peak memory, and then timed in ``repeats`` rounds of one call each, A B C A B C ..., so that
    load from other processes falls on all variants alike.

    Args:
        models: names from :data:`BENCH_MODELS`.
        tasks: from :data:`TASKS`: ``forward`` (backbone, inference mode), ``backward`` (backbone
            forward + backward), ``train`` (one Faster R-CNN FPN training iteration: forward,
            losses, backward, SGD step) and ``inference`` (Faster R-CNN FPN, ``batch`` images).
        settings: names from :data:`SETTINGS`; those that do not apply to a task are skipped.
            The baseline (``detectron2``) is always run.
        device: "cpu" or "cuda" (or "cuda:N").
        size: (H, W) of the images.
        batch: images per call.
        repeats: timed rounds.
        warmup: untimed calls of each variant first (``torch.compile`` compiles in the first).
        seed: weights, norm statistics and images.
        clock: what the statistics are of: "wall" (``time.perf_counter``) or "cpu" (the
            process's CPU time, ``time.process_time``: with ``torch.set_num_threads(1)`` it is
            the least disturbed by other jobs on a shared machine). Both are recorded.
        progress: tqdm bars.

    Returns:
        a json-ready dict: ``machine``, ``config`` and ``results`` (one record per variant).
    """
    from tqdm import tqdm

    unknown = [t for t in tasks if t not in TASKS]
    unknown += [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ValueError(
            f"unknown tasks/settings {unknown}; tasks: {list(TASKS)}; settings: {list(SETTINGS)}"
        )
    for name, value in (("repeats", repeats), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be a positive integer; got {value!r}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"--size must be two numbers H W of at least 32; got {tuple(size)}")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"--clock must be 'wall' or 'cpu'; got {clock!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available to this torch")
    names = [BASELINE] + [s for s in settings if s != BASELINE]
    size = (int(size[0]), int(size[1]))
    records = []
    load_before = _load_average()
    for model_name in models:
        for task in tasks:
            torch.manual_seed(seed)
            cfg = _bench_config(model_name, torch.device("cpu"), task)
            detector = task in ("train", "inference")
            if detector:
                from detectron2.modeling import build_model

                reference = _realistic_norms(build_model(cfg), seed)
                inputs = _detector_inputs(batch, size, torch.device("cpu"), seed)
            else:
                from detectron2.layers import ShapeSpec
                from detectron2.modeling.backbone.resnet import build_resnet_backbone

                reference = _realistic_norms(
                    build_resnet_backbone(cfg, ShapeSpec(channels=3)), seed
                )
                inputs = None
            gmacs, gmacs_note = _count_gmacs(task, reference, size, inputs)
            cfg.MODEL.DEVICE = str(dev)
            reference.to(dev)
            if detector:
                inputs = _detector_inputs(batch, size, dev, seed)
            else:
                x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
                x = x.to(dev)
            variants = []
            for name in names:
                setting = SETTINGS[name]
                if not setting.applies_to(task):
                    continue
                if detector:
                    variants.append(_detector_variant(setting, task, reference, cfg, inputs))
                else:
                    variants.append(_backbone_variant(setting, task, reference, cfg, x))
            del reference
            label = f"{model_name} {task}"
            expected = None
            errors, memory = {}, {}
            for v in tqdm(variants, desc=f"{label}: warm-up", disable=not progress):
                for _ in range(warmup):
                    v.step()
                _sync(dev)
                got = v.check()
                if expected is None:
                    expected = got
                errors[v.setting.name] = max_relative_error(got, expected)
                memory[v.setting.name] = _peak_memory(dev, v.step)
            walls: dict[str, list[float]] = {v.setting.name: [] for v in variants}
            cpus: dict[str, list[float]] = {v.setting.name: [] for v in variants}
            for _ in tqdm(range(repeats), desc=f"{label}: rounds", disable=not progress):
                for v in variants:
                    _sync(dev)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    v.step()
                    _sync(dev)
                    walls[v.setting.name].append(time.perf_counter() - start)
                    cpus[v.setting.name].append(time.process_time() - start_cpu)
            times = walls if clock == "wall" else cpus
            base = statistics.median(times[BASELINE])
            for v in variants:
                s, t = v.setting, times[v.setting.name]
                med = statistics.median(t)
                records.append(
                    {
                        "model": model_name,
                        "task": task,
                        "setting": s.name,
                        "source": s.source,
                        "block_form": s.block_form if s.source == "project" else None,
                        "channels_last": s.channels_last or s.optimize,
                        "fold_bn": s.optimize,
                        "amp": s.amp_dtype(dev) or "float32",
                        "compile": s.compile,
                        "batch": batch,
                        "size": list(size),
                        "clock": clock,
                        "times_s": t,
                        "wall_times_s": walls[s.name],
                        "cpu_times_s": cpus[s.name],
                        "median_s": med,
                        "q1_s": _quantile(t, 0.25),
                        "q3_s": _quantile(t, 0.75),
                        "min_s": min(t),
                        "max_s": max(t),
                        "ms_per_image": 1e3 * med / batch,
                        "images_per_s": batch / med,
                        "ratio_to_baseline": med / base,
                        "peak_memory_mib": memory[s.name][0],
                        "memory_measure": memory[s.name][1],
                        "gmacs_per_image": gmacs,
                        "gmacs_measure": gmacs_note,
                        "achieved_gmacs_per_s": gmacs * batch / med,
                        "max_rel_err_vs_baseline": errors[s.name],
                    }
                )
            del variants
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return {
        "machine": _machine(dev),
        "config": {
            "models": list(models),
            "tasks": list(tasks),
            "settings": names,
            "device": str(dev),
            "size": list(size),
            "batch": batch,
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
            "clock": clock,
        },
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "results": records,
    }


_TASK_TITLES = {
    "forward": "Backbone forward (stem + res2..res5, inference mode)",
    "backward": "Backbone forward + backward",
    "train": "Faster R-CNN FPN training iteration (forward, losses, backward, SGD step)",
    "inference": "Faster R-CNN FPN inference",
}


def benchmark_markdown(report: dict, command: str | None = None) -> str:
    """The report as markdown: the machine, the command, and one table per task."""
    from tabulate import tabulate

    m, c = report["machine"], report["config"]
    lines = [
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} CPUs, torch {m.get('torch')}, "
        f"{m.get('threads')} threads{', GPU ' + m['gpu'] if 'gpu' in m else ''}); device "
        f"`{c['device']}`; images {c['size'][0]}x{c['size'][1]}, batch {c['batch']}; "
        f"{c['repeats']} interleaved rounds after {c['warmup']} warm-up call(s); "
        f"{'wall-clock' if c.get('clock', 'wall') == 'wall' else 'process CPU'} time. Load average "
        f"(1, 5, 15 min) before {report.get('load_average_before')}, after "
        f"{report.get('load_average_after')}.",
        "",
    ]
    if command:
        lines += ["```", command, "```", ""]
    for task in TASKS:
        rows = [r for r in report["results"] if r["task"] == task]
        if not rows:
            continue
        table = [
            [
                r["model"],
                r["setting"],
                f"{r['ms_per_image']:.1f}",
                f"{1e3 * r['q1_s'] / r['batch']:.1f}-{1e3 * r['q3_s'] / r['batch']:.1f}",
                f"{1e3 * r['min_s'] / r['batch']:.1f}-{1e3 * r['max_s'] / r['batch']:.1f}",
                f"{r['images_per_s']:.2f}",
                f"**{r['ratio_to_baseline']:.2f}**",
                "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}",
                f"{r['gmacs_per_image']:.1f}",
                f"{r['achieved_gmacs_per_s']:.1f}",
                f"{r['max_rel_err_vs_baseline']:.1e}",
            ]
            for r in rows
        ]
        headers = [
            "model",
            "setting",
            "ms/img (median)",
            "IQR",
            "min-max",
            "img/s",
            "time vs detectron2",
            "peak MiB",
            "GMAC/img",
            "GMAC/s",
            "max rel err",
        ]
        lines += [
            f"### {_TASK_TITLES[task]}",
            "",
            tabulate(table, headers=headers, tablefmt="github"),
            "",
        ]
    memory = {r["memory_measure"] for r in report["results"]}
    lines.append(
        "Peak memory: " + ", ".join(sorted(memory)) + " (cpu_profiler_allocations: the peak of "
        "tensor memory allocated through torch's CPU allocator during one call, above what was "
        "allocated before it, from torch.profiler's allocation events (oneDNN's own scratch "
        "buffers are not included); cuda_max_allocated: torch.cuda.max_memory_allocated during "
        "one call minus the memory allocated before). GMAC: fvcore's count, one multiply-add = one "
        "flop. max rel err: max |output - detectron2's| / max |detectron2's| (backward: the input "
        "gradient; train: the RPN losses of one seeded forward)."
    )
    return "\n".join(lines) + "\n"


def plot_benchmark(report: dict, path: str) -> None:
    """Time per image against GMACs per image, one panel per task, one marker per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in report["results"])]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5), squeeze=False)
    markers = "osD^v<>px*hH+"
    settings = list(dict.fromkeys(r["setting"] for r in report["results"]))
    for ax, task in zip(axes[0], tasks):
        for i, setting in enumerate(settings):
            rows = [r for r in report["results"] if r["task"] == task and r["setting"] == setting]
            if not rows:
                continue
            ax.scatter(
                [r["gmacs_per_image"] for r in rows],
                [r["ms_per_image"] for r in rows],
                marker=markers[i % len(markers)],
                label=setting,
                s=40,
            )
        for model in dict.fromkeys(r["model"] for r in report["results"] if r["task"] == task):
            row = next(
                r
                for r in report["results"]
                if r["task"] == task and r["model"] == model and r["setting"] == BASELINE
            )
            ax.annotate(
                model,
                (row["gmacs_per_image"], row["ms_per_image"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xlabel("GMACs per image (fvcore)")
        ax.set_ylabel("ms per image (median)")
        ax.set_title(_TASK_TITLES[task], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    c = report["config"]
    fig.suptitle(
        f"{report['machine'].get('cpu')} / {c['device']}, {c['size'][0]}x{c['size'][1]}",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def write_benchmark(
    report: dict,
    json_path: str | None,
    markdown_path: str | None,
    plot_path: str | None = None,
    command: str | None = None,
) -> None:
    """Write the report as json and/or markdown (and the plot), each atomically."""
    if json_path:
        write_json_atomic(json_path, {**report, "command": command}, indent=1)
    if markdown_path:
        write_text_atomic(markdown_path, benchmark_markdown(report, command))
    if plot_path:
        plot_benchmark(report, plot_path)
