"""Inference and training speed-ups that keep results equal, and the ones that trade precision.

Grouped 3x3 convolutions do few FLOPs but run slowly in PyTorch's default (NCHW) layout, which is
why ResNeXt is often passed over for ResNet. What this module does about it, measured by
``tools/benchmark.py`` (``docs/benchmarks.md``):

* :func:`fold_batchnorm`: absorb every frozen / eval-mode BatchNorm into the convolution before it
  (detectron2's ``Conv2d`` applies its ``.norm`` in ``forward``; after folding ``.norm`` is None).
  Same outputs up to float rounding, one pass over each activation fewer.
* :func:`to_channels_last`: store weights (and so activations) in NHWC, where oneDNN and cuDNN run
  grouped convolutions much faster. Same numbers.
* :func:`onednn_1x1_convolutions`: send the 1x1 convolutions to oneDNN, which PyTorch's own
  rule replaces by a 2x slower kernel on one thread. Same numbers; for one-thread processes.
* :func:`optimize_for_inference`: the first two plus ``eval()``, RoIs pooled on the channels-last
  maps (:mod:`resnext_det.roi_align`), Winograd F(4x4, 3x3) for the wide dense 3x3 convolutions
  in fp32 CPU inference (:mod:`resnext_det.winograd`) and, asked for, the third; the fp32-equal
  default.
* :func:`autocast`: bf16 / fp16 mixed precision (changes results; compared with a stated tolerance).
* :func:`compile_module`: ``torch.compile`` in place (inductor; needs a C compiler on CPU).
* :class:`InferenceSettings` / :func:`prepare_for_inference`: the one inference set-up every
  detector call goes through (``--eval-only``, ``predict``, the comparison, ``Predictor``).

Every function here changes only the module it is given. Process settings (threads, the
allocator's freed memory) are :mod:`resnext_det.runtime`'s, applied by the commands.

Training on the CPU (``cfg.CPU_TRAINING``): :func:`cpu_training_settings` turns the config into
one :class:`CPUTrainingSettings` record (channels_last, bf16 autocast where the CPU has native
bf16, thread count, freed memory kept, oneDNN 1x1 convolutions on one thread); the trainer
applies its model part (:func:`apply_cpu_training`), the command its process part
(:func:`resnext_det.runtime.configure_process`), and the benchmark measures the same record.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Union

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

from .backbone import ResNeXt
from .blocks import AggregatedBottleneckBlock
from .mixed_precision import fp32_prediction_layers
from .roi_align import channels_last_roi_align
from .winograd import WinogradConv2d, winograd_convolutions

__all__ = [
    "AMP_DTYPES",
    "fold_batchnorm",
    "to_channels_last",
    "optimize_for_inference",
    "autocast",
    "autocast_weights",
    "compile_module",
    "onednn_1x1_convolutions",
    "ONEDNN_1X1_DILATION",
    "InferenceSettings",
    "InferenceChoice",
    "INFERENCE_KEYS",
    "prepare_for_inference",
    "apply_inference_config",
    "max_relative_error",
    "CPUTrainingSettings",
    "cpu_training_settings",
    "apply_cpu_training",
    "native_bf16",
]

logger = logging.getLogger(__name__)

# Names accepted for mixed precision (config values and command-line choices) -> dtype.
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "": None,
    "float32": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _fold_scale_shift(norm: nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The per-channel ``(scale, shift)`` with ``norm(x) == x * scale + shift``, in float64; None
    when ``norm`` is not a BatchNorm that can be folded (GroupNorm, Identity, ...)."""
    if isinstance(norm, FrozenBatchNorm2d):
        mean, var, eps = norm.running_mean, norm.running_var, norm.eps
    elif isinstance(norm, nn.BatchNorm2d):  # also SyncBatchNorm's and detectron2's NaiveSyncBN
        if norm.training:
            raise ValueError(
                f"fold_batchnorm: '{name}' is a {type(norm).__name__} in training mode, whose "
                "output depends on the batch; call model.eval() first (or use FrozenBN)"
            )
        if norm.running_mean is None:
            raise ValueError(
                f"fold_batchnorm: '{name}' has track_running_stats=False, so it normalises with "
                "batch statistics even in eval mode and cannot be folded into a convolution"
            )
        mean, var, eps = norm.running_mean, norm.running_var, norm.eps
    else:
        return None
    # float64, so that the folded weights are rounded to fp32 once instead of after every step.
    scale = torch.rsqrt(var.double() + eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    return scale, shift


@torch.no_grad()
def _absorb(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """``conv(x) * scale + shift`` as one convolution: scale the output channels' weights and add
    the shift to the bias (created when ``conv`` had none)."""
    weight = conv.weight
    folded = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    weight.copy_(folded.to(weight.dtype))
    if shift is None:
        return
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    bias = bias.to(weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(bias, requires_grad=weight.requires_grad)
    else:
        conv.bias.copy_(bias)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every FrozenBatchNorm2d and eval-mode BatchNorm2d into the convolution it follows.

    Covers detectron2's ``Conv2d`` (which holds its norm as ``.norm``: the stem, every block's
    convs and shortcut, the concat form's ``conv3``, FPN/box-head convs built with a norm) and the
    aggregated form's ``norm3``, which acts on the sum of the C paths' ``conv3``: each path's conv3
    takes the scale, path 0 alone takes the shift. Folded norms become ``None`` (``nn.Identity`` for
    ``norm3``), so calling this again changes nothing. GroupNorm and other norms are left alone.

    Outputs are equal up to float rounding; the folded network is for inference (its convs now
    carry the norms' frozen statistics as trainable weights).

    Args:
        module: any module (a detector, an FPN, a ResNeXt, detectron2's ResNet, ...); changed in
            place.

    Returns:
        ``module``.

    Raises:
        ValueError: a BatchNorm to fold is in training mode or keeps no running statistics.
    """
    folded = 0
    for name, m in module.named_modules():
        norm = getattr(m, "norm", None)
        if isinstance(m, nn.Conv2d) and isinstance(norm, nn.Module):
            terms = _fold_scale_shift(norm, f"{name}.norm")
            if terms is not None:
                _absorb(m, *terms)
                m.norm = None  # detectron2's Conv2d skips a None norm
                folded += 1
        if isinstance(m, AggregatedBottleneckBlock):
            terms = _fold_scale_shift(m.norm3, f"{name}.norm3")
            if terms is not None:
                scale, shift = terms
                for i, path in enumerate(m.paths):
                    _absorb(path.conv3, scale, shift if i == 0 else None)
                m.norm3 = nn.Identity()
                folded += 1
    logger.debug("fold_batchnorm: folded %d norms", folded)
    return module


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store ``module``'s 4-d weights in channels_last (NHWC) format, in place; returns it.

    A convolution whose weight is channels_last returns channels_last outputs, so the format
    spreads through the network from the first conv without converting the input. ResNeXt
    backbones inside ``module`` also get ``channels_last = True`` (their ``forward`` then
    converts the input, as ``MODEL.RESNEXT.CHANNELS_LAST`` does). Values are unchanged.
    """
    module.to(memory_format=torch.channels_last)
    for m in module.modules():
        if isinstance(m, ResNeXt):
            m.channels_last = True
    return module


# A 1x1 kernel has a single tap, so its dilation changes neither the result nor the output size,
# but PyTorch sends every dilated CPU convolution to oneDNN (see onednn_1x1_convolutions).
ONEDNN_1X1_DILATION = (2, 2)


def onednn_1x1_convolutions(module: nn.Module) -> int:
    """Send ``module``'s stride-1 1x1 CPU convolutions to oneDNN; in place, idempotent; returns
    how many were changed. For a model that runs in a one-thread process.

    Why: PyTorch sends an fp32 1x1 convolution with stride 1 and a batch under 16 to its own
    kernel (MKL's sgemm) instead of oneDNN when it has one thread (``ConvParams::use_mkldnn``:
    "THNN is faster when single-threaded"). On this project's CPU (AMD Zen 5, 1 thread) oneDNN
    runs them 2.5x faster (``tools/peak_check.py``), and 1x1 convolutions are most of a ResNeXt's
    multiply-adds: the fp32 backbone forward at 800x1216 drops from 0.70x / 0.80x of detectron2's
    time to 0.48x / 0.46x (X-50-32x4d / X-101-32x8d, ``docs/benchmarks.md``). A 1x1 kernel
    has a single tap, so its dilation changes nothing in the result or the output size, but a
    dilated convolution always goes to oneDNN: each such convolution gets
    ``dilation = ONEDNN_1X1_DILATION``. On more threads PyTorch uses oneDNN anyway, so the
    change gains nothing there: the caller, who knows its process's thread count, decides
    (the commands and the CPU trainer apply it on one thread only). CPU weights only (cuDNN has
    no such rule). Same numbers as oneDNN gives on two threads.
    """
    changed = 0
    for m in module.modules():
        if (
            isinstance(m, nn.Conv2d)
            and m.kernel_size == (1, 1)
            and m.stride == (1, 1)
            and m.dilation == (1, 1)
            and m.weight.device.type == "cpu"
        ):
            m.dilation = ONEDNN_1X1_DILATION
            changed += 1
    return changed


def optimize_for_inference(model: nn.Module, *, onednn_1x1: bool = False) -> nn.Module:
    """Apply every inference optimisation that keeps fp32 outputs equal; in place, idempotent.

    That is: ``eval()``, :func:`fold_batchnorm`, :func:`to_channels_last`, RoIAlign on the
    channels-last maps (:func:`resnext_det.roi_align.channels_last_roi_align`: a detector's
    poolers, CPU only), Winograd F(4x4, 3x3) for the wide dense 3x3 convolutions (FPN outputs,
    RPN head; :func:`resnext_det.winograd.winograd_convolutions`: fp32 CPU inference on large
    maps) and, with ``onednn_1x1`` (for a model that runs on one CPU thread),
    :func:`onednn_1x1_convolutions`.
    The result depends only on the arguments, never on the process. Works on a detector
    (``GeneralizedRCNN``), an FPN or a backbone (this project's ``ResNeXt`` of any block form, or
    detectron2's ResNet). Outputs stay within 1e-4 (relative to the largest output) of the model
    before the call; ``tests/test_speed.py`` checks this against detectron2's own ResNet.
    Mixed precision (:func:`autocast`) and ``torch.compile`` (:func:`compile_module`) are not
    applied: the first changes results, the second costs minutes of compilation.

    Args:
        model: the model to optimise (its BatchNorms are put in eval mode and folded).
        onednn_1x1: also route the stride-1 1x1 convolutions to oneDNN; pays off when the model
            runs in a one-thread process, where PyTorch would not use oneDNN for them.

    Returns:
        ``model``, for chaining: ``model = optimize_for_inference(build_model(cfg))``.
    """
    model.eval()
    fold_batchnorm(model)
    to_channels_last(model)
    channels_last_roi_align(model)
    winograd_convolutions(model)
    if onednn_1x1:
        onednn_1x1_convolutions(model)
    return model


@contextlib.contextmanager
def autocast(device: str | torch.device, dtype: str | torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``device`` in ``dtype`` ("bfloat16", "float16"); a no-op for None,
    "" or "float32". On CPU bf16 uses AVX-512 BF16 / AMX where the CPU has them; fp16 autocast on
    CPU works but is slow on CPUs without native fp16 arithmetic.
    """
    if isinstance(dtype, str):
        if dtype not in AMP_DTYPES:
            raise ValueError(
                f"mixed-precision dtype must be one of {[k for k in AMP_DTYPES if k]} (or '' for "
                f"fp32); got {dtype!r}"
            )
        dtype = AMP_DTYPES[dtype]
    if dtype is None or dtype == torch.float32:
        yield
        return
    device_type = torch.device(device).type
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def compile_module(module: nn.Module, **kwargs) -> nn.Module:
    """``module.compile(**kwargs)`` (``torch.compile`` in place: the module keeps its type and
    attributes, so detectron2 code that reads ``backbone.output_shape()`` keeps working); returns
    ``module``. The first call of each input shape compiles (minutes on a small CPU)."""
    module.compile(**kwargs)
    return module


# The keys of ``MODEL.RESNEXT`` that say how a detector runs at inference (the process's allocator
# choice included); a LazyConfig gives them as ``train.inference.KEY``.
INFERENCE_KEYS = ("OPTIMIZE_FOR_INFERENCE", "INFERENCE_AMP_DTYPE", "COMPILE", "KEEP_FREED_MEMORY")


@dataclass(frozen=True)
class InferenceSettings:
    """How a detector runs at inference; the switches of ``cfg.MODEL.RESNEXT``.

    Attributes:
        optimize: :func:`optimize_for_inference` (fp32-equal: BN folded, channels_last).
        amp_dtype: autocast dtype of the forward pass, "" for fp32 ("bfloat16", "float16").
        compile: ``torch.compile`` the backbone (:func:`compile_module`).
        onednn_1x1: :func:`onednn_1x1_convolutions` (for a one-thread process; the commands
            set it from their own thread count).
    """

    optimize: bool = True
    amp_dtype: str = ""
    compile: bool = False
    onednn_1x1: bool = False

    def __post_init__(self) -> None:
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(
                f"MODEL.RESNEXT.INFERENCE_AMP_DTYPE must be one of {list(AMP_DTYPES)}; got "
                f"{self.amp_dtype!r}"
            )

    @classmethod
    def from_config(cls, cfg, *, onednn_1x1: bool = False) -> InferenceSettings:
        """The settings of a yacs config's ``MODEL.RESNEXT`` (defaults where a key is absent)."""
        x = cfg.MODEL.get("RESNEXT", {})
        return cls(
            optimize=bool(x.get("OPTIMIZE_FOR_INFERENCE", True)),
            amp_dtype=str(x.get("INFERENCE_AMP_DTYPE", "")),
            compile=bool(x.get("COMPILE", False)),
            onednn_1x1=onednn_1x1,
        )

    @classmethod
    def resolve(cls, choice: InferenceChoice, cfg) -> InferenceSettings:
        """The settings a model of config ``cfg`` runs with, for a caller's ``choice``: None, the
        config's own (:meth:`from_config`); a function, its answer for ``cfg``; settings, those.
        How every detector call of the project (predict, ``--eval-only``, the comparison, a
        sweep's cells) picks its settings, so that each model of a comparison runs as its own
        config says."""
        if choice is None:
            return cls.from_config(cfg)
        return choice if isinstance(choice, InferenceSettings) else choice(cfg)

    def describe(self) -> str:
        """A few words for reports: ``"fp32, optimised"``, ``"bfloat16 autocast, optimised,
        compiled"``, ``"fp32, as built"``."""
        words = [f"{self.amp_dtype} autocast" if self.amp_dtype else "fp32"]
        words.append("optimised" if self.optimize else "as built")
        if self.compile:
            words.append("compiled")
        return ", ".join(words)


# What a caller may pass where a detector is run: None (each model's config says), settings for
# every model, or a function of the model's config (the commands: the config's settings with the
# process's oneDNN choice).
InferenceChoice = Union[InferenceSettings, Callable[[Any], InferenceSettings], None]


# The layers whose weights autocast casts to its dtype at every call (its lower-precision ops:
# convolution, linear), by exact type: a subclass may compute otherwise (DeformConv2d runs its
# kernel in the weights' dtype; WinogradConv2d is Conv2d's computation under autocast).
_AUTOCAST_WEIGHT_LAYERS = (nn.Conv2d, Conv2d, WinogradConv2d, nn.Linear)


@torch.no_grad()
def autocast_weights(module: nn.Module, dtype: str | torch.dtype) -> int:
    """Store the weights and biases of ``module``'s convolutions and linear layers in ``dtype``
    ("bfloat16", "float16"), the dtype ``torch.autocast`` casts them to at every call; in place;
    returns how many layers changed.

    Under ``autocast(device, dtype)`` the outputs are the same bits as with fp32 weights (the
    cast is the same rounding, done once instead of at every call: 41M elements per call for
    X-50-32x4d Faster R-CNN). Outside autocast the model no longer runs (fp32 inputs, bf16
    weights): for a model that always runs under it, as :func:`prepare_for_inference`'s does.
    """
    dtype = AMP_DTYPES[dtype] if isinstance(dtype, str) else dtype
    changed = 0
    for m in module.modules():
        if type(m) in _AUTOCAST_WEIGHT_LAYERS and m.weight.dtype != dtype:
            # The layer's own tensors only: an unfolded norm inside a detectron2 Conv2d
            # (GroupNorm) keeps fp32. .to keeps the memory format (channels_last).
            for p in (m.weight, m.bias):
                if p is not None:
                    p.data = p.data.to(dtype)
            changed += 1
    return changed


def prepare_for_inference(model: nn.Module, settings: InferenceSettings) -> nn.Module:
    """Apply ``settings`` to ``model`` (``eval()`` always; in place; returns it). Run the forward
    pass inside ``autocast(device, settings.amp_dtype)``: with a mixed-precision dtype the heads'
    prediction layers compute in fp32 (:func:`resnext_det.mixed_precision.fp32_prediction_layers`),
    and with ``optimize`` too the other convolutions' and linear layers' weights are stored in
    that dtype (:func:`autocast_weights`: the same outputs under autocast, without casting every
    weight at every call), so the model runs under that autocast only."""
    model.eval()
    if AMP_DTYPES[settings.amp_dtype] is not None:
        fp32_prediction_layers(model)
    if settings.optimize:
        optimize_for_inference(model, onednn_1x1=settings.onednn_1x1)
        if AMP_DTYPES[settings.amp_dtype] is not None:
            autocast_weights(model, settings.amp_dtype)
    if settings.compile:
        compile_module(getattr(model, "backbone", model))
    return model


def apply_inference_config(model: nn.Module, cfg, *, onednn_1x1: bool = False) -> nn.Module:
    """:func:`prepare_for_inference` with the settings of ``cfg.MODEL.RESNEXT``
    (``OPTIMIZE_FOR_INFERENCE``, ``COMPILE``); in place, returns ``model``. Mixed precision
    (``INFERENCE_AMP_DTYPE``) is a context: wrap the forward in
    ``autocast(cfg.MODEL.DEVICE, cfg.MODEL.RESNEXT.INFERENCE_AMP_DTYPE)``. The process (threads,
    allocator: ``MODEL.RESNEXT.KEEP_FREED_MEMORY``) is the caller's:
    :func:`resnext_det.runtime.configure_process`.
    """
    return prepare_for_inference(model, InferenceSettings.from_config(cfg, onednn_1x1=onednn_1x1))


def max_relative_error(actual, expected) -> float:
    """``max |actual - expected| / max |expected|`` over all tensors of two equal structures
    (tensors, dicts, lists, detectron2 ``Instances``' fields), each tensor scaled by its own peak.

    This is the measure behind "fp32 outputs equal within 1e-4 (relative)": relative to the size
    of the outputs, so that near-zero elements do not dominate.
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            raise ValueError(
                f"outputs differ in structure: expected a tensor of shape "
                f"{tuple(expected.shape)}, got {type(actual).__name__} "
                f"{tuple(getattr(actual, 'shape', ()))}"
            )
        if expected.numel() == 0:
            return 0.0
        ref = expected.detach().double()
        diff = (actual.detach().double() - ref).abs().max()
        return float(diff / ref.abs().max().clamp_min(1e-12))
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            raise ValueError(f"outputs differ in keys: {sorted(actual)} vs {sorted(expected)}")
        return max((max_relative_error(actual[k], expected[k]) for k in expected), default=0.0)
    if isinstance(expected, (list, tuple)):
        if len(actual) != len(expected):
            raise ValueError(f"outputs differ in length: {len(actual)} vs {len(expected)}")
        return max((max_relative_error(a, e) for a, e in zip(actual, expected)), default=0.0)
    if hasattr(expected, "get_fields"):  # detectron2 Instances / Boxes-holding structures
        fields = {k: getattr(v, "tensor", v) for k, v in expected.get_fields().items()}
        got = {k: getattr(v, "tensor", v) for k, v in actual.get_fields().items()}
        return max_relative_error(got, fields)
    raise ValueError(f"cannot compare outputs of type {type(expected).__name__}")


def native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    with contextlib.suppress(AttributeError, RuntimeError):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


@functools.cache
def _say_bf16_falls_back() -> None:
    # Once per process: a command resolves the settings more than once (validation, then use).
    logger.info("CPU_TRAINING.AMP_DTYPE bfloat16: this CPU has no native bf16; fp32")


@dataclass(frozen=True)
class CPUTrainingSettings:
    """How a CPU training run executes (``cfg.CPU_TRAINING`` resolved for this machine).

    Attributes:
        channels_last: the detector's weights (and so activations) in NHWC, and its RoIs
            pooled on those maps (:func:`resnext_det.roi_align.channels_last_roi_align`: the
            backward too, 1.6x faster than torchvision's CPU kernel).
        amp_dtype: autocast dtype of the forward pass, "" for fp32.
        num_threads: torch intra-op threads (0: leave torch's default); a process setting,
            applied by the command (:func:`resnext_det.runtime.configure_process`).
        keep_freed_memory: :func:`resnext_det.runtime.keep_freed_memory`; a process setting,
            applied by the command.
        onednn_1x1: :func:`onednn_1x1_convolutions`; True only where ``num_threads`` is 1.
    """

    channels_last: bool = False
    amp_dtype: str = ""
    num_threads: int = 0
    keep_freed_memory: bool = False
    onednn_1x1: bool = False


_CPU_AMP = ("", "bfloat16")


def cpu_training_settings(cfg) -> CPUTrainingSettings | None:
    """The CPU training settings ``cfg`` asks for on this machine; None when ``MODEL.DEVICE``
    is not the CPU or ``CPU_TRAINING.ENABLED`` is False (detectron2's defaults then apply).

    ``AMP_DTYPE "bfloat16"`` resolves to fp32 on a CPU without native bf16 (logged), and
    ``SOLVER.AMP.ENABLED`` asks for bf16 whatever ``CPU_TRAINING`` says.

    Raises:
        ValueError: ``CPU_TRAINING.AMP_DTYPE`` or ``NUM_THREADS`` has a value not allowed.
    """
    if torch.device(cfg.MODEL.DEVICE).type != "cpu":
        return None
    node = cfg.get("CPU_TRAINING")
    amp = "bfloat16" if cfg.SOLVER.AMP.ENABLED else ""
    if node is None or not node.ENABLED:
        return CPUTrainingSettings(amp_dtype=amp) if amp else None
    if node.AMP_DTYPE not in _CPU_AMP:
        raise ValueError(
            f"CPU_TRAINING.AMP_DTYPE must be one of {list(_CPU_AMP)}; got {node.AMP_DTYPE!r}"
        )
    threads = node.NUM_THREADS
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(
            f"CPU_TRAINING.NUM_THREADS must be an integer >= 0 (0: torch's default); got "
            f"{threads!r}"
        )
    if node.AMP_DTYPE and not amp:
        if native_bf16():
            amp = node.AMP_DTYPE
        else:
            _say_bf16_falls_back()
    return CPUTrainingSettings(
        channels_last=bool(node.CHANNELS_LAST),
        amp_dtype=amp,
        num_threads=threads,
        keep_freed_memory=bool(node.get("KEEP_FREED_MEMORY", True)),
        # oneDNN for the 1x1 convolutions pays off on one thread only (PyTorch uses it on more).
        onednn_1x1=bool(node.get("ONEDNN_1X1", True)) and threads == 1,
    )


def apply_cpu_training(model: nn.Module, settings: CPUTrainingSettings | None) -> nn.Module:
    """Apply the model part of ``settings`` (channels_last with its RoI pooling, oneDNN 1x1
    convolutions) to
    ``model``, before its optimizer is made; in place, returns ``model``. The autocast dtype is
    the trainer's to use; threads and the allocator are the process's
    (:func:`resnext_det.runtime.configure_process`, called by the command)."""
    if settings is None:
        return model
    if settings.channels_last:
        to_channels_last(model)
        channels_last_roi_align(model)
    if settings.onednn_1x1:
        onednn_1x1_convolutions(model)
    return model
