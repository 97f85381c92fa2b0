"""What this machine and environment are: the one reporter (``python -m resnext_det.env``).

Used for bug reports and set-up checks (the command), for the training log
(:func:`environment_report`) and for the benchmark's ``machine`` record (:func:`machine_info`):
Python, torch, torchvision and detectron2 versions and where detectron2 came from, the CPU, CUDA
and the GPU, and which of detectron2's compiled ops are available.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision

from .version import __version__

__all__ = [
    "DETECTRON2_OPS",
    "collect_env",
    "compiled_ops",
    "detectron2_source",
    "environment_report",
    "machine_info",
]

# The ops of detectron2 0.6's csrc/vision.cpp that its Python code calls.
DETECTRON2_OPS = (
    "box_iou_rotated",
    "nms_rotated",
    "roi_align_rotated_forward",
    "deform_conv_forward",
    "modulated_deform_conv_forward",
    "COCOevalAccumulate",
    "COCOevalEvaluateImages",
)


def detectron2_source() -> str:
    """Where the installed detectron2 came from: the project's no-ops build, or another one."""
    import detectron2
    from detectron2 import _C

    try:
        version = importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:
        version = getattr(detectron2, "__version__", "unknown")
    if getattr(_C, "IS_STAND_IN", False):
        kind = "pb1-detectron2 sdist, built by tools/build_detectron2_wheel.py (no compiled ops)"
    else:
        kind = "a build with compiled ops"
    return f"{version} from {detectron2.__path__[0]} ({kind})"


def compiled_ops() -> dict[str, bool]:
    """Which detectron2 compiled ops can be called here."""
    from detectron2 import _C

    available = {}
    for op in DETECTRON2_OPS:
        try:
            getattr(_C, op)
            available[op] = True
        except (AttributeError, RuntimeError):
            available[op] = False
    return available


def _cpu_model() -> tuple[str, bool | None, bool | None]:
    """The CPU's model name and whether it has AVX-512 BF16 and AMX-BF16 (None where
    /proc/cpuinfo is not)."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
        return name, "avx512_bf16" in text, "amx_bf16" in text
    return name, None, None


def machine_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """The machine as a json-ready dict (the benchmark's ``machine`` record).

    Keys: ``python``, ``torch``, ``torchvision``, ``threads`` (torch's CPU threads), ``cpu``
    (model name), ``cpu_count``, ``avx512_bf16``, ``amx_bf16``, ``cuda_available``; with CUDA
    also ``cuda`` (the version torch was built with), ``cudnn``, and for ``device`` (default:
    the current CUDA device, if any) ``gpu`` (its name), ``gpu_capability`` and ``gpu_memory_gib``.
    """
    cpu, bf16, amx = _cpu_model()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "avx512_bf16": bf16,
        "amx_bf16": amx,
        "cuda_available": torch.cuda.is_available(),
    }
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        index = device.index if device is not None and device.index is not None else None
        index = torch.cuda.current_device() if index is None else index
        props = torch.cuda.get_device_properties(index)
        info.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
        )
    return info


def collect_env() -> list[tuple[str, str]]:
    """(name, value) rows of everything this module knows, detectron2 included."""
    m = machine_info()
    rows = [
        ("resnext_det", f"{__version__} from {Path(__file__).resolve().parent}"),
        ("Python", f"{m['python']} ({platform.platform()})"),
        ("torch", m["torch"]),
        ("torchvision", m["torchvision"]),
        ("detectron2", detectron2_source()),
        ("CUDA available", str(m["cuda_available"])),
    ]
    if "gpu" in m:
        rows.append(
            (
                "GPU",
                f"{m['gpu']} (compute capability {m['gpu_capability']}, "
                f"{m['gpu_memory_gib']} GiB; CUDA {m['cuda']}, cuDNN {m['cudnn']})",
            )
        )
    rows.append(("CPU", f"{m['cpu']} ({m['cpu_count']} logical CPUs)"))
    rows.append(("CPU threads", str(m["threads"])))
    ops = compiled_ops()
    rows.append(
        (
            "detectron2 compiled ops",
            ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in ops.items()),
        )
    )
    return rows


def format_rows(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def environment_report() -> str:
    """The environment for the training log: detectron2's own ``collect_env_info`` where it works,
    else (a detectron2 without compiled ops cannot report its compiler) :func:`collect_env`'s
    rows. (torch's own report runs pip and nvidia-smi: seconds, so it is not used.)"""
    try:
        from detectron2.utils.collect_env import collect_env_info

        return collect_env_info()
    except (RuntimeError, ImportError, OSError) as exc:
        return format_rows([*collect_env(), ("detectron2.collect_env_info", str(exc))])


def main() -> None:
    print(format_rows(collect_env()))


if __name__ == "__main__":
    sys.exit(main())
