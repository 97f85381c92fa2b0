"""Traced exports (TorchScript, ONNX): the backbone traced once, reloaded from the written file and
checked against the eager model on two input sizes; a file that differs is refused."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..speed import fold_batchnorm, max_relative_error
from .formats import ONNX_OPSET, VERIFY_TOLERANCE

__all__ = ["FeatureTuple", "sample_inputs", "traced_writer"]

logger = logging.getLogger(__name__)


class FeatureTuple(nn.Module):
    """The backbone with its dict output as a tuple in a fixed order: tracers and ONNX need
    positional outputs, and the sidecar records the names."""

    def __init__(self, backbone: nn.Module, names: Sequence[str]):
        super().__init__()
        self.backbone = backbone
        self.names = list(names)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        return tuple(features[n] for n in self.names)


def sample_inputs(channels: int, divisor: int) -> list[torch.Tensor]:
    """Two inputs of different batch size, height and width (multiples of ``divisor``): the first
    to trace, both to check that the traced graph did not freeze a shape."""
    g = torch.Generator().manual_seed(0)
    shapes = [(1, channels, 2 * divisor, 2 * divisor), (2, channels, 3 * divisor, 4 * divisor)]
    return [torch.randn(s, generator=g) for s in shapes]


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's warning about detectron2's ``Conv2d`` empty-input check (``x.numel()
    == 0 and self.training``): it is False for every eval-mode input, and the check on a second
    input size below would catch any shape the trace did freeze."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Converting a tensor to a Python boolean", category=Warning
        )
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX")
        yield


def traced_writer(
    format: str, model: nn.Module, *, fold_bn: bool, metadata: dict[str, Any]
) -> Callable[[Path], None]:
    names = list(model.output_shape())
    channels = metadata["input"]["channels"]
    inputs = sample_inputs(channels, metadata["input"]["size_divisibility"])
    with torch.no_grad():
        expected = [FeatureTuple(model, names)(x) for x in inputs]
    if fold_bn:
        model = fold_batchnorm(copy.deepcopy(model))
    wrapper = FeatureTuple(model, names).eval()

    def verify(run: Callable[[torch.Tensor], Sequence[torch.Tensor]], runtime: str) -> None:
        errors = [max_relative_error(list(run(x)), list(e)) for x, e in zip(inputs, expected)]
        worst = max(errors)
        if not worst <= VERIFY_TOLERANCE:
            raise RuntimeError(
                f"the {format} export differs from the eager model by {worst:.3g} (relative) on "
                f"inputs {[tuple(x.shape) for x in inputs]}; tolerance {VERIFY_TOLERANCE:g}. "
                f"Nothing was written"
            )
        metadata["verification"] = {
            "runtime": runtime,
            "input_shapes": [list(x.shape) for x in inputs],
            "max_relative_error": worst,
            "tolerance": VERIFY_TOLERANCE,
        }

    def write_torchscript(path: Path) -> None:
        with torch.no_grad(), _quiet_tracer():
            traced = torch.jit.trace(wrapper, inputs[0], check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            verify(loaded, f"torch.jit {torch.__version__}")

    def write_onnx(path: Path) -> None:
        dims = {0: "batch", 2: "height", 3: "width"}
        with torch.no_grad(), _quiet_tracer():
            torch.onnx.export(
                wrapper,
                (inputs[0],),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=names,
                # Each output its own size names: res2 is H/4 and res5 H/32 of the input's
                # height, not the same "height" (which would tell a runtime they are equal).
                dynamic_axes={
                    "images": dims,
                    **{n: {0: "batch", 2: f"{n}_height", 3: f"{n}_width"} for n in names},
                },
            )
        try:
            import onnxruntime as ort
        except ImportError:
            logger.warning("onnxruntime is not installed: the ONNX export was not checked")
            metadata["verification"] = None
            return
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> list[torch.Tensor]:
            return [torch.from_numpy(o) for o in session.run(None, {"images": x.numpy()})]

        verify(run, f"onnxruntime {ort.__version__}")

    return write_torchscript if format == "torchscript" else write_onnx
