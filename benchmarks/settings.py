"""What the benchmark compares: the models, the tasks and the settings (ways of running them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from resnext_det.spec import VARIANTS

from .measure import one_thread_onednn_1x1

__all__ = [
    "BENCH_MODELS",
    "TORCHVISION_MODELS",
    "TASKS",
    "BASELINE",
    "CPU_TRAIN_DEFAULTS",
    "Setting",
    "SETTINGS",
    "DEFAULT_SETTINGS",
    "BenchmarkInputError",
]


class BenchmarkInputError(ValueError):
    """A benchmark argument is not allowed; ``field`` names it (``size``, ``models``, ...) so
    that a command line can name its own flag."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


# name -> (depth, cardinality, width_per_group); torchvision's constructor of the same network.
# The models the benchmark knows: the named variants torchvision also builds (its network is a
# reference setting). From the one table of variants (resnext_det.spec.VARIANTS).
BENCH_MODELS: dict[str, tuple[int, int, int]] = {
    name: (v.spec.depth, v.spec.cardinality, v.spec.width_per_group)
    for name, v in VARIANTS.items()
    if v.torchvision
}
TORCHVISION_MODELS = {name: VARIANTS[name].torchvision for name in BENCH_MODELS}
# forward / backward: the backbone (stem + res2..res5) alone; train / inference: Faster R-CNN FPN.
TASKS = ("forward", "backward", "train", "inference")
BASELINE = "detectron2"
# The setting that is what tools/train_net.py does on the CPU by default.
CPU_TRAIN_DEFAULTS = "cpu_train_defaults"


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
    # inductor's freezing (weights as constants, prepacked for oneDNN; inference only)
    freezing: bool = False
    # The project's CPU training defaults (cfg.CPU_TRAINING, speed.cpu_training_settings)
    # as the trainer applies them; resolved per config by resolve().
    cpu_training_defaults: bool = False
    # What the project's commands also do to their process on the CPU
    # (runtime.keep_freed_memory: training, inference): not the variant's to apply, a process
    # shares one allocator; run_benchmark(memory="as-shipped") runs such variants in a process
    # started with that setting.
    keeps_freed_memory: bool = False
    # speed.onednn_1x1_convolutions: what the commands apply in a one-thread process (the
    # trainer's CPU_TRAINING.ONEDNN_1X1 with NUM_THREADS 1; inference with one thread). Set by
    # resolve() from the benchmark's thread count.
    onednn_1x1: bool = False

    def applies_to(self, task: str) -> bool:
        training = task in ("backward", "train")
        if self.cpu_training_defaults:
            return task == "train"
        if self.optimize and training:
            return False
        if self.amp == "auto" and not training:
            return False  # inference settings name their dtype
        if self.amp in ("bfloat16", "float16") and training:
            return False  # training AMP is SOLVER.AMP.ENABLED: "auto"
        # torchvision's detectors are other architectures, not comparable: backbone tasks only.
        return self.source != "torchvision" or task in ("forward", "backward")

    def resolve(self, cfg) -> Setting | None:
        """The concrete setting for ``cfg`` (``cpu_training_defaults``: what the trainer would
        apply to ``cfg``; None where that is nothing, e.g. on CUDA; freed memory is kept on the
        CPU only). The thread count is ``cfg.CPU_TRAINING.NUM_THREADS``
        (:func:`benchmarks.variants.bench_config` puts the benchmark's there; 0: this
        process's): on one CPU thread the folded inference and the trainer's defaults send the
        1x1 convolutions to oneDNN, as the commands do."""
        if not self.cpu_training_defaults:
            if torch.device(cfg.MODEL.DEVICE).type != "cpu":
                return replace(self, keeps_freed_memory=False, onednn_1x1=False)
            threads = cfg.get("CPU_TRAINING", {}).get("NUM_THREADS", 0) or None
            onednn = self.optimize and one_thread_onednn_1x1(cfg.MODEL.DEVICE, threads)
            return replace(self, onednn_1x1=onednn)
        from resnext_det.speed import cpu_training_settings

        s = cpu_training_settings(cfg)
        if s is None:
            return None
        return replace(
            self,
            channels_last=s.channels_last,
            amp=s.amp_dtype,
            keeps_freed_memory=s.keep_freed_memory,
            onednn_1x1=s.onednn_1x1,
        )

    def compile_kwargs(self) -> dict:
        """Keyword arguments of :func:`resnext_det.speed.compile_module` for this setting."""
        return {"options": {"freezing": True}} if self.freezing else {}

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
        # Folded inference, as --eval-only and compare_models run it (apply_inference_config).
        *(
            Setting(name, optimize=True, keeps_freed_memory=True, **kw)
            for name, kw in (
                ("optimized", {}),
                ("optimized+bf16", {"amp": "bfloat16"}),
                ("optimized+fp16", {"amp": "float16"}),
                ("optimized+compile", {"compile": True}),
                ("optimized+compile+freezing", {"compile": True, "freezing": True}),
                ("optimized+bf16+compile", {"amp": "bfloat16", "compile": True}),
            )
        ),
        Setting("amp", amp="auto"),
        Setting("channels_last+amp", channels_last=True, amp="auto"),
        Setting("channels_last+compile", channels_last=True, compile=True),
        Setting(CPU_TRAIN_DEFAULTS, cpu_training_defaults=True),
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
    CPU_TRAIN_DEFAULTS,
)
