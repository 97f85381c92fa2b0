"""Safe readers for the containers checkpoints come in, checks of what they hold, and a writer.

Nothing here executes code from a file: torch files are read with ``torch.load(weights_only=True)``
and pickles (Detectron's ``.pkl``) with an unpickler that can build only numpy arrays and plain
containers, each array's declared size checked against the file's before anything is allocated.
The container is recognised from the file's first bytes, never from its name; a name that says
``.safetensors`` on another container is refused (torch.load and other tools trust that suffix),
and so is a TorchScript program (code, not a checkpoint). Every reader turns values into tensors
with :func:`as_tensor` and refuses NaN/Inf with :func:`check_finite`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadFileError
from ..io import atomic_write, write_bytes_atomic
from ..reading import read_json_file

__all__ = [
    "SIDECAR_SHA256",
    "CheckpointError",
    "as_tensor",
    "check_finite",
    "is_tensor",
    "read_checkpoint",
    "read_sidecar",
    "safe_pickle_load",
    "save_checkpoint",
    "sha256_of",
]

logger = logging.getLogger(__name__)

# The sidecar key holding the sha256 of the file it describes: a sidecar counts only when it
# matches (a copied or renamed sidecar must not give another file its conventions).
SIDECAR_SHA256 = "sha256"


class CheckpointError(BadFileError):
    """A checkpoint file that cannot be read or does not hold what it must; names the file."""


def is_tensor(value: Any) -> bool:
    """Whether a checkpoint entry is a tensor (torch or numpy) rather than metadata."""
    return isinstance(value, (torch.Tensor, np.ndarray))


def as_tensor(key: str, value: Any, where: str) -> torch.Tensor:
    """A checkpoint entry as a torch tensor (numpy arrays shared, not copied where possible).

    Raises:
        CheckpointError: an object array or a non-tensor (names ``where`` and ``key``).
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError(f"{where}: entry '{key}' holds Python objects, not numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise CheckpointError(f"{where}: entry '{key}' is a {type(value).__name__}, not a tensor")


def check_finite(state_dict: Mapping[str, Any], source: str) -> None:
    """Refuse weights holding NaN or Inf (a diverged run's checkpoint): they would load, train
    at a loss of NaN and evaluate to AP ``nan`` without a word.

    Args:
        state_dict: name -> tensor (non-tensors and integer tensors are skipped).
        source: the file or model, for the message.

    Raises:
        CheckpointError: naming how many tensors hold how many non-finite values, and which.
    """
    bad: list[tuple[str, int, int]] = []
    for key, value in state_dict.items():
        if isinstance(value, np.ndarray) and not value.dtype.hasobject:
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            count = int((~finite).sum())
            bad.append((key, count, int(torch.isnan(value).sum())))
    if bad:
        total = sum(b[1] for b in bad)
        shown = ", ".join(f"{k} ({n}: {nan} NaN, {n - nan} Inf)" for k, n, nan in bad[:8])
        more = f", ... ({len(bad) - 8} more)" if len(bad) > 8 else ""
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) hold {total} NaN/Inf value(s): {shown}{more}. "
            f"These weights come from a diverged run or a corrupt file; use an earlier checkpoint"
        )


_SHA256: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; remembered per (path, size, mtime) so that a
    file read twice in one run (configure_for_weights, then the checkpointer) is hashed once."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


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


_NP_RECONSTRUCT = _numpy_attr(
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct"
)
_NP_SCALAR = _numpy_attr("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
_NP_FROMBUFFER = _numpy_attr("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
# torch.load(weights_only=True) may build these too (a trainer's numpy RNG state).
_RECONSTRUCT, _SCALAR = _NP_RECONSTRUCT, _NP_SCALAR


class _Refused(pickle.UnpicklingError):
    """What the restricted unpickler refuses on purpose (a global, a call, a size)."""


class _CheckedArray(np.ndarray):
    """What a pickle's arrays are built as: ``__setstate__`` checks the declared shape and dtype
    against the bytes left in the file before numpy allocates (an object array of a declared
    10**8 elements crashes numpy; a 117-byte file can declare terabytes)."""

    _budget: list[int]  # set by the unpickler: bytes of array data the file can still hold

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused(f"malformed numpy array state ({type(state).__name__})")
        shape, dtype = state[-4], state[-3]
        if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple):
            raise _Refused("malformed numpy array state (shape or dtype)")
        if dtype.hasobject:
            raise _Refused("an array of Python objects (dtype=object): a checkpoint holds numbers")
        count = math.prod(int(n) for n in shape) if shape else 1
        if any(int(n) < 0 for n in shape):
            raise _Refused(f"an array of negative shape {shape}")
        _spend(self._budget, count * dtype.itemsize, f"an array of shape {shape} and {dtype}")
        super().__setstate__(state)


def _spend(budget: list[int], nbytes: int, what: str) -> None:
    if nbytes > budget[0]:
        raise _Refused(
            f"{what} declares {nbytes} bytes of data, more than the {budget[0]} bytes the file "
            f"still holds: a truncated or malicious pickle (nothing was allocated)"
        )
    budget[0] -= nbytes


class _NdarrayStandIn:
    """Stands for numpy.ndarray in a pickle: an argument of _reconstruct, never called itself
    (``ndarray(shape)`` would allocate any declared shape; numpy's own pickles never call it)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("the pickle calls numpy.ndarray(...) directly")


_NDARRAY = _NdarrayStandIn()


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only numpy arrays, dtypes and scalars (at any pickle protocol, from Python 2's
    Detectron files to protocol 5), bytes from Python 2 strings, and OrderedDict; anything else
    (os.system, subprocess, builtins.eval, ...) is refused, and no array may declare more data
    than the file holds."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        budget = [len(data)]
        checked = type("_Array", (_CheckedArray,), {"_budget": budget})

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
            if subtype is not _NDARRAY:
                raise _Refused("numpy _reconstruct of a type other than ndarray")
            if shape != (0,):  # numpy pickles an empty shell and fills it in __setstate__
                raise _Refused(f"numpy _reconstruct with shape {shape!r}")
            return _NP_RECONSTRUCT(checked, (0,), dtype)

        def scalar(dtype: Any, *args: Any) -> Any:
            if isinstance(dtype, np.dtype) and not dtype.hasobject:
                _spend(budget, dtype.itemsize, f"a numpy scalar of {dtype}")
            return _NP_SCALAR(dtype, *args)

        def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            if isinstance(dtype, np.dtype) and dtype.hasobject:
                raise _Refused("an array of Python objects (dtype=object)")
            return _NP_FROMBUFFER(buf, dtype, shape, order)  # a view of bytes from the file

        def encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
            # Python 2 byte strings arrive as latin1 text; no other codec is needed.
            if encoding.replace("-", "").lower() != "latin1" or not isinstance(obj, str):
                raise _Refused(f"_codecs.encode with {encoding!r}")
            return obj.encode("latin1", errors)

        def empty_bytes(*args: Any) -> bytes:
            # protocol 2 writes b"" as a call of bytes(); bytes(n) would allocate n zero bytes
            if args:
                raise _Refused("the pickle calls bytes(...) with arguments")
            return b""

        self._globals: dict[tuple[str, str], Any] = {
            ("__builtin__", "bytes"): empty_bytes,
            ("builtins", "bytes"): empty_bytes,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): np.dtype,
            ("collections", "OrderedDict"): OrderedDict,
            ("_codecs", "encode"): encode,
        }
        for core in ("numpy.core", "numpy._core"):
            self._globals[(f"{core}.multiarray", "_reconstruct")] = reconstruct
            self._globals[(f"{core}.multiarray", "scalar")] = scalar
            self._globals[(f"{core}.numeric", "_frombuffer")] = frombuffer

    def find_class(self, module: str, name: str) -> Any:
        obj = self._globals.get((module, name))
        if obj is None:
            raise _Refused(
                f"refused to load global '{module}.{name}': a .pkl checkpoint may hold only numpy "
                f"arrays and plain containers (dict, list, str, numbers); anything else could run "
                f"code when unpickled"
            )
        return obj


def _plain(obj: Any) -> Any:
    """Arrays built as the checked subclass, back as plain ndarrays (views, no copies)."""
    if isinstance(obj, np.ndarray):
        return obj.view(np.ndarray) if type(obj) is not np.ndarray else obj
    if isinstance(obj, dict):  # OrderedDict too
        for k, v in obj.items():
            obj[k] = _plain(v)
        return obj
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def safe_pickle_load(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy arrays and plain containers (latin1 for Python 2),
    with every array's declared size checked against ``len(data)`` before it is allocated."""
    return _plain(_RestrictedUnpickler(data).load())


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


def _torchscript_archive(path: str) -> bool:
    """Whether a zip file is a TorchScript program (``torch.jit.save``): its archive holds
    ``constants.pkl`` and ``code/``, which ``torch.save``'s never does (torch's own test)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # torch.load says what is wrong with it
    return any(name.split("/", 1)[1:] == ["constants.pkl"] for name in names)


_SAFETENSORS_SUFFIX = ".safetensors"


def read_checkpoint(path: str | os.PathLike) -> tuple[Any, str]:
    """Read a checkpoint file without running code from it.

    Args:
        path: a torch file (``.pth``/``.pt``/``.bin``, zip or legacy format), a ``.safetensors``
            file or a pickle (``.pkl``, Detectron/detectron2 model zoo). The name does not matter.

    Returns:
        ``(obj, container)``: what the file holds (for safetensors, ``{"state_dict": tensors,
        "__metadata__": header metadata}``) and ``"torch"``, ``"safetensors"`` or ``"pickle"``.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, unknown container, a pickle
            naming a global other than numpy's, a TorchScript program, or a ``.safetensors``
            name on another container (torch.load, safetensors and other tools go by that name)
            (with the path and what was wrong).
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
    torchscript = container == "torch" and _torchscript_archive(path)
    if path.lower().endswith(_SAFETENSORS_SUFFIX) and container != "safetensors":
        what = {
            "torch": "a TorchScript program (torch.jit.save)"
            if torchscript
            else "a torch zip checkpoint (torch.save)",
            "pickle": "a pickle (a .pkl or torch's legacy format)",
        }.get(container, f"no checkpoint container known here (first bytes {head[:8]!r})")
        raise CheckpointError(
            f"'{path}' is named {_SAFETENSORS_SUFFIX} but is not a safetensors file: it holds "
            f"{what}; give it the suffix of what it is (e.g. .pth for torch.save, .pkl for a "
            f"pickle), or convert it again with resnext-det convert"
        )
    if torchscript:
        raise CheckpointError(
            f"'{path}' is a TorchScript program (torch.jit.save), not a checkpoint: its weights "
            f"come only by running its code. Give the checkpoint it was made from, or a "
            f"state_dict saved with torch.save(model.state_dict(), PATH)"
        )

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
            if isinstance(exc, _Refused):
                raise CheckpointError(f"'{path}': {exc}") from exc
            raise fail("the file is truncated or corrupt", exc) from exc
        except (
            EOFError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
            AttributeError,
            MemoryError,
            OverflowError,  # a FRAME or length opcode declaring more than 2**63 bytes
            RecursionError,  # containers nested (or referring to themselves) without end
        ) as exc:
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
    """The metadata sidecar ``<path>.json`` written beside exported files, or ``{}``.

    A sidecar counts only when its ``"sha256"`` is the file's: one left beside another file (a
    re-export, a copy, a rename) is ignored with a warning instead of lending its conventions.
    """
    sidecar = f"{os.fspath(path)}.json"
    if not os.path.isfile(sidecar):
        return {}
    data = read_json_file(sidecar, "metadata sidecar", error=CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"metadata sidecar '{sidecar}' must hold a JSON object; got {type(data).__name__}"
        )
    recorded = data.get(SIDECAR_SHA256)
    actual = sha256_of(path)
    if recorded != actual:
        logger.warning(
            "ignoring metadata sidecar '%s': it records sha256 %r, but '%s' has sha256 %s (the "
            "sidecar describes another file)",
            sidecar,
            recorded,
            os.fspath(path),
            actual,
        )
        return {}
    return data


def _safetensors_bytes(obj: dict[str, Any], path: str | os.PathLike) -> bytes:
    """``{"model": tensors, other entries}`` as a safetensors file: the tensors, and each other
    entry as header metadata (text as it is, anything else as JSON, as the exports write it; the
    reader decodes the JSON back). Tensors sharing memory are copied apart (safetensors refuses
    shared storage)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in obj["model"].items():
        tensor = as_tensor(key, value, f"'{os.fspath(path)}'").detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or tensor.untyped_storage().nbytes() != tensor.nbytes:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    metadata = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in obj.items() if k != "model"
    }
    return save(tensors, metadata=metadata)


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` atomically: a pickle of numpy arrays for ``.pkl`` (what detectron2's
    ``DetectionCheckpointer`` reads from a ``.pkl``), a safetensors file for ``.safetensors``
    (``obj["model"]`` the tensors, the other entries its metadata, see
    :func:`_safetensors_bytes`), ``torch.save`` otherwise."""
    if os.fspath(path).lower().endswith(_SAFETENSORS_SUFFIX):
        write_bytes_atomic(path, _safetensors_bytes(obj, path))
    elif os.fspath(path).endswith(".pkl"):

        def to_numpy(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.detach().cpu().numpy()
            if isinstance(value, dict):
                return {k: to_numpy(v) for k, v in value.items()}
            return value

        write_bytes_atomic(path, pickle.dumps(to_numpy(obj), protocol=4))
    else:
        atomic_write(path, lambda f: torch.save(obj, f))
