"""Where the time of the project's detector goes, fp32-equal and bf16: the backbone forward
against the machine's measured peak, and a per-operator account of one whole detector call.

For each dtype (fp32 with the fp32-equal settings, bf16 autocast) this builds the project's
``Predictor`` as ``resnext-det predict`` does (:func:`benchmarks.end_to_end._build`, in this
process; its allocator keeps freed memory, as the command's), on one photo resized to short side
800, with the end-to-end benchmark's weights. Then, interleaved with the machine's peak
(:class:`benchmarks.measure.PeakProbe`, fp32 and bf16, same threads) over ``rounds`` rounds:

* the backbone (bottom-up) forward time of a whole call (:class:`benchmarks.end_to_end.
  StageClock`), its multiply-adds at the image's padded size (:func:`resnext_det.complexity.
  count_complexity`) and so its GMAC/s and fraction of the dtype's peak (target for bf16 on a
  CPU with native bf16: >= 50%);
* each convolution's time (forward hooks, one extra call), summed by kind: grouped 3x3,
  dense 3x3 (and the stem's 7x7), 1x1, with each kind's GMAC/s and fraction of peak: in the
  backbone, the FPN, the RPN head;
* a torch.profiler pass of one call, by operator (self CPU time), and summed into categories:
  convolutions, matrix products (the box head's fc layers), dtype casts and layout conversions
  (``aten::to``, ``_to_copy``, ``copy_``, ``contiguous``, ``clone``), element-wise and
  memory-bound ops (add, relu, max-pool, upsample, ...), RoIAlign, NMS, the rest.

``tools/bf16_account.py`` is the command line; it writes json and markdown.
"""

from __future__ import annotations

import collections
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from resnext_det.winograd import WinogradConv2d

from .end_to_end import layer_multiply_adds
from .measure import PeakProbe, load_average, profiler_lines_hidden, quiet_verdict

__all__ = ["op_category", "conv_kind", "account", "account_markdown"]

_CATEGORIES = (
    ("convolution", ("conv", "mkldnn_convolution")),
    # the products of resnext_det.winograd (the only batched matmul of a detector's forward)
    ("convolution (Winograd products)", ("aten::bmm$",)),
    ("matrix product (fc)", ("addmm", "linear", "::mm", "matmul")),
    ("cast / layout conversion", ("aten::to$", "_to_copy", "copy_", "contiguous", "clone")),
    # torchvision's kernel, or the project's channels-last one (resnext_det.roi_align)
    ("roi_align", ("roi_align", "embedding_bag")),
    ("nms", ("nms",)),
    ("element-wise / memory-bound", ("add", "relu", "mul", "sub", "div", "max_pool", "upsample",
                                     "cat", "sigmoid", "exp", "softmax", "clamp", "where",
                                     "index", "sort", "topk", "fill_", "zero_")),
)  # fmt: skip


def op_category(name: str) -> str:
    """The account's category of a profiler operator name: the first with a key in the name
    (a key ending in ``$``: the whole name)."""
    for category, keys in _CATEGORIES:
        if any(name == k[:-1] if k.endswith("$") else k in name for k in keys):
            return category
    return "other"


def conv_kind(m: nn.Conv2d, x: torch.Tensor | None = None) -> str:
    """The account's kind of convolution ``m`` (of its call on ``x``: Winograd or not)."""
    if isinstance(m, WinogradConv2d) and x is not None and m.uses_winograd(x):
        return "dense 3x3 by Winograd"
    if m.kernel_size == (1, 1):
        return "1x1"
    if m.groups > 1:
        return f"grouped {m.kernel_size[0]}x{m.kernel_size[1]}"
    return f"dense {m.kernel_size[0]}x{m.kernel_size[1]}"


class _ConvClock:
    """Per convolution: seconds and multiply-adds of the last call, by (part, kind)."""

    def __init__(self, model: nn.Module):
        self.handles, self.acc = [], collections.defaultdict(lambda: [0.0, 0.0])
        parts = {"backbone": model.backbone.bottom_up, "fpn": model.backbone,
                 "rpn": model.proposal_generator, "roi_heads": model.roi_heads}  # fmt: skip
        seen: set[int] = set()
        for part, root in parts.items():
            for m in root.modules():
                if isinstance(m, nn.Conv2d) and id(m) not in seen:
                    seen.add(id(m))
                    self.handles.append(m.register_forward_pre_hook(self._start))
                    self.handles.append(m.register_forward_hook(self._stop(part)))

    def _start(self, m, _):
        m._account_t0 = time.perf_counter()

    def _stop(self, part):
        def hook(m, inputs, out):
            key = (part, conv_kind(m, inputs[0]))
            self.acc[key][0] += time.perf_counter() - m._account_t0
            self.acc[key][1] += layer_multiply_adds(m, inputs[0], out)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _by_dtype(predictor, model, bgr, rounds: int, probe: PeakProbe, verbose: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from resnext_det.complexity import count_complexity
    from resnext_det.speed import autocast

    from .end_to_end import StageClock

    clock = StageClock(model)
    sizes = []
    h = model.backbone.bottom_up.register_forward_pre_hook(
        lambda m, args: sizes.append(tuple(args[0].shape[-2:]))
    )
    for _ in range(2):  # warm
        predictor(bgr)
    stages = []
    for _ in range(rounds):
        stages.append(clock.call(predictor, bgr)[1])
        probe.round()
    h.remove()
    size = sizes[-1]
    # fvcore counts 1 flop per multiply-add; traced under the model's autocast (a bf16 model's
    # weights are stored in bf16: speed.autocast_weights).
    with autocast("cpu", predictor.inference.amp_dtype):
        gmacs = count_complexity(model.backbone.bottom_up, size).gflops
    backbone_s = statistics.median(s["backbone"] for s in stages)

    convs = _ConvClock(model)
    predictor(bgr)
    conv_account = {f"{part} {kind}": {"seconds": t, "gmacs": macs / 1e9}
                    for (part, kind), (t, macs) in sorted(convs.acc.items())}  # fmt: skip
    convs.remove()

    with profiler_lines_hidden(not verbose), profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor(bgr)
    ops = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()]
    ops.sort(key=lambda x: -x[1])
    categories = collections.Counter()
    for name, seconds, _ in ops:
        categories[op_category(name)] += seconds
    return {
        "input_size": list(size),
        "stages_s": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
        "backbone_gmacs": gmacs,
        "backbone_s": backbone_s,
        "backbone_gmacs_per_s": gmacs / backbone_s,
        "convolutions": conv_account,
        "profiler_total_self_s": sum(s for _, s, _ in ops),
        "categories_s": dict(categories.most_common()),
        "top_ops": [{"op": n, "self_s": s, "calls": c} for n, s, c in ops[:25]],
    }


def account(
    *,
    model_name: str = "X-101-32x8d",
    image: str | Path,
    rounds: int = 5,
    threads: int | None = None,
    seed: int = 0,
    short_side: int = 800,
    verbose: bool = False,
) -> dict:
    """The account of ``model_name`` on ``image`` for fp32 and bf16; see the module docstring."""
    import tempfile

    from detectron2.data.detection_utils import read_image

    from resnext_det.env import machine_info
    from resnext_det.runtime import configure_process
    from resnext_det.speed import native_bf16

    from .end_to_end import _build, _weights

    if threads:
        configure_process(num_threads=threads)
    loads = [load_average()]
    probe = PeakProbe(torch.device("cpu"))
    probe.warmup()
    bgr = read_image(str(image), format="BGR")
    out: dict = {
        "machine": machine_info("cpu"),
        "config": {
            "model": model_name,
            "image": str(image),
            "rounds": rounds,
            "threads": torch.get_num_threads(),
            "seed": seed,
        },  # fmt: skip
        "native_bf16": native_bf16(),
        "dtypes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pth"
        _weights(model_name, seed, weights)
        for side, dtype in (("project", "float32"), ("project+bf16", "bfloat16")):
            predictor, model, settings = _build(side, model_name, str(weights), short_side)
            out["dtypes"][dtype] = {"settings": repr(settings)} | _by_dtype(
                predictor, model, bgr, rounds, probe, verbose
            )
            loads.append(load_average())
            del predictor, model
    peak = probe.summary()
    out["peak"] = peak
    for dtype, r in out["dtypes"].items():
        p = peak[dtype]["gmacs_per_s"]
        r["backbone_fraction_of_peak"] = r["backbone_gmacs_per_s"] / p
        for c in r["convolutions"].values():
            c["fraction_of_peak"] = c["gmacs"] / max(c["seconds"], 1e-12) / p
    out["load_average_samples"] = [v for v in loads if v]
    out["quiet"] = quiet_verdict(loads, own_threads=torch.get_num_threads())
    return out


def account_markdown(report: dict) -> str:
    m, q = report["machine"], report["quiet"]
    lines = [
        f"# Where the time goes: {report['config']['model']}-FPN, one image",
        "",
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} cores, avx512_bf16 {m.get('avx512_bf16')},"
        f" amx_bf16 {m.get('amx_bf16')}), {report['config']['threads']} threads; native bf16: "
        f"{report['native_bf16']}. Load: max {q['max_load_1min']}, "
        f"**{'quiet' if q['quiet'] else 'NOT quiet'}**.",
        "",
        "| dtype | input | backbone s | backbone GMAC | GMAC/s | peak GMAC/s (kernel) | of peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for dtype, r in report["dtypes"].items():
        p = report["peak"][dtype]
        lines.append(
            f"| {dtype} | {r['input_size'][0]}x{r['input_size'][1]} | {r['backbone_s']:.3f} | "
            f"{r['backbone_gmacs']:.1f} | {r['backbone_gmacs_per_s']:.0f} | "
            f"{p['gmacs_per_s']:.0f} ({p['kernel']}) | {r['backbone_fraction_of_peak']:.0%} |"
        )
    for dtype, r in report["dtypes"].items():
        stages = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in r["stages_s"].items())
        lines += ["", f"## {dtype}", "", f"Stages (median): {stages}.", "",
                  "| convolutions | s | GMAC | of peak |", "|---|---|---|---|"]  # fmt: skip
        for name, c in r["convolutions"].items():
            lines.append(
                f"| {name} | {c['seconds']:.3f} | {c['gmacs']:.1f} | {c['fraction_of_peak']:.0%} |"
            )
        total = r["profiler_total_self_s"]
        lines += ["", "| profiler category | self s | share |", "|---|---|---|"]
        for name, s in r["categories_s"].items():
            lines.append(f"| {name} | {s:.3f} | {s / total:.0%} |")
        lines += ["", "| top operators | self s | calls |", "|---|---|---|"]
        for o in r["top_ops"][:15]:
            lines.append(f"| `{o['op']}` | {o['self_s']:.3f} | {o['calls']} |")
    return "\n".join(lines) + "\n"
