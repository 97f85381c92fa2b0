"""Safe readers for the containers checkpoints come in, and an atomic checkpoint writer.

Nothing here executes code from a file: torch files are read with ``torch.load(weights_only=True)``
and pickles (Detectron's ``.pkl``) with an unpickler that can build only numpy arrays and plain
containers. The container is recognised from the file's first bytes, never from its name.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadFileError
from ..io import atomic_write, write_bytes_atomic

__all__ = [
    "CheckpointError",
    "read_checkpoint",
    "read_sidecar",
    "safe_pickle_load",
    "save_checkpoint",
]


class CheckpointError(BadFileError):
    """A checkpoint file that cannot be read or does not hold what it must; names the file."""


def _numpy_attr(*candidates: str) -> Any:
    """The first importable ``module.attr`` (numpy 2 moved ``numpy.core`` to ``numpy._core``)."""
    import importlib

    for dotted in candidates:
        module, _, attr = dotted.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


_RECONSTRUCT = _numpy_attr(
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct"
)
_SCALAR = _numpy_attr("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
_FROMBUFFER = _numpy_attr("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")

# The only globals a pickle may name: what numpy needs to rebuild arrays, dtypes and scalars (at
# any pickle protocol, from Python 2's Detectron files to protocol 5), bytes from Python 2 strings,
# and OrderedDict. Anything else (os.system, subprocess, builtins.eval, ...) is refused.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): __import__("codecs").encode,
    ("collections", "OrderedDict"): OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _PICKLE_GLOBALS.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refused to load global '{module}.{name}': a .pkl checkpoint may hold only numpy "
                f"arrays and plain containers (dict, list, str, numbers); anything else could run "
                f"code when unpickled"
            )
        return obj


def safe_pickle_load(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy arrays and plain containers (latin1 for Python 2)."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


# What torch.load(weights_only=True) may additionally build: numpy arrays, scalars and dtypes
# inside a torch file (a trainer's saved numpy RNG state is a uint32 array). Object arrays stay out.
_NUMPY_DTYPES = [
    getattr(np.dtypes, n)
    for n in dir(getattr(np, "dtypes", object))
    if n.endswith("DType") and n != "ObjectDType"
]
_TORCH_SAFE_GLOBALS = [
    g for g in (_RECONSTRUCT, np.ndarray, np.dtype, _SCALAR, *_NUMPY_DTYPES) if g is not None
]

# torch's legacy (pre-1.6, non-zip) files start with this number, pickled.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _container_of(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return "torch"  # torch.save's zip format (also .bin from transformers-style tools)
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 2 <= header_len < 100_000_000:
            return "safetensors"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        return "pickle"  # protocol 2+ start with PROTO (0x80); 0/1 with a container opcode
    return "unknown"


def read_checkpoint(path: str | os.PathLike) -> tuple[Any, str]:
    """Read a checkpoint file without running code from it.

    Args:
        path: a torch file (``.pth``/``.pt``/``.bin``, zip or legacy format), a ``.safetensors``
            file or a pickle (``.pkl``, Detectron/detectron2 model zoo). The name does not matter.

    Returns:
        ``(obj, container)``: what the file holds (for safetensors, ``{"state_dict": tensors,
        "__metadata__": header metadata}``) and ``"torch"``, ``"safetensors"`` or ``"pickle"``.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, unknown container, or a pickle
            naming a global other than numpy's (with the path and what was wrong).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file '{path}' does not exist (or is not a file)")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint file '{path}' is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(16)
    container = _container_of(head)

    def fail(what: str, exc: BaseException) -> CheckpointError:
        return CheckpointError(
            f"cannot read '{path}' ({size} bytes) as a {container} file: {what}: "
            f"{type(exc).__name__}: {exc}"
        )

    if container == "torch":
        try:
            with torch.serialization.safe_globals(_TORCH_SAFE_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=True), container
        except pickle.UnpicklingError as exc:
            raise fail(
                "it holds objects other than tensors and plain containers "
                "(torch.load(weights_only=True) refused them)",
                exc,
            ) from exc
        except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise fail("the file is truncated or corrupt", exc) from exc
    if container == "safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            tensors = {}
            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                    tensors[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise fail("the file is truncated or corrupt", exc) from exc
        return {"state_dict": tensors, "__metadata__": dict(metadata)}, container
    if container == "pickle":
        data = Path(path).read_bytes()
        try:
            obj = safe_pickle_load(data)
        except pickle.UnpicklingError as exc:
            if "refused to load global" in str(exc):
                raise CheckpointError(f"'{path}': {exc}") from exc
            raise fail("the file is truncated or corrupt", exc) from exc
        except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise fail("the file is truncated or corrupt", exc) from exc
        if obj == _TORCH_LEGACY_MAGIC and not isinstance(obj, bool):
            container = "torch"  # torch's legacy format: a pickle stream that starts with a magic
            try:
                with torch.serialization.safe_globals(_TORCH_SAFE_GLOBALS):
                    return torch.load(path, map_location="cpu", weights_only=True), container
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
                raise fail("torch.load(weights_only=True) failed", exc) from exc
        return obj, container
    raise CheckpointError(
        f"'{path}' is not a checkpoint resnext_det can read: its first bytes {head[:8]!r} are "
        f"not those of a torch (zip or legacy), safetensors or pickle file"
    )


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata sidecar ``<path>.json`` written beside exported files, or ``{}``."""
    sidecar = f"{os.fspath(path)}.json"
    if not os.path.isfile(sidecar):
        return {}
    try:
        with open(sidecar, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"metadata sidecar '{sidecar}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(
            f"metadata sidecar '{sidecar}' must hold a JSON object; got {type(data).__name__}"
        )
    return data


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` atomically: a pickle of numpy arrays for ``.pkl`` (what detectron2's
    ``DetectionCheckpointer`` reads from a ``.pkl``), ``torch.save`` otherwise."""
    if os.fspath(path).endswith(".pkl"):

        def to_numpy(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.detach().cpu().numpy()
            if isinstance(value, dict):
                return {k: to_numpy(v) for k, v in value.items()}
            return value

        write_bytes_atomic(path, pickle.dumps(to_numpy(obj), protocol=4))
    else:
        atomic_write(path, lambda f: torch.save(obj, f))
