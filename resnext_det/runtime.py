"""Process-wide settings, for whoever owns the process: never applied by the library itself.

Thread counts, the allocator, warning and logging filters belong to the process, not to a model.
``import resnext_det`` and every library function (``optimize_for_inference``, the trainers,
``compare_models``, ``Predictor``, ``load_pretrained``, ``export_backbone``, ...) leave them as
they are; the project's own commands (``resnext-det ...``, ``tools/*.py``) set them in their entry
points through :func:`configure_process`, and a library user may call it on purpose:

    >>> from resnext_det.runtime import configure_process
    >>> configure_process(num_threads=1, keep_freed_memory=True)   # a CPU training worker

The allocator part can also be had without code, from the environment of a process you start:
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647`` (glibc), which is
:data:`KEEP_FREED_MEMORY_ENV`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import warnings

import torch

__all__ = [
    "KEEP_FREED_MEMORY_ENV",
    "VERBOSE_ENV",
    "configure_process",
    "keep_freed_memory",
    "quiet_third_party_notices",
    "set_console_verbosity",
]

logger = logging.getLogger(__name__)

# glibc's malloc serves blocks above M_MMAP_THRESHOLD (128 KiB, raised as such blocks are freed,
# to at most 32 MiB) with mmap and unmaps them when freed, and trims the heap's free top above
# M_TRIM_THRESHOLD. A forward pass at detection size frees and reallocates GBs of activations,
# so every pass page-faults them in afresh: 0.87M minor faults and 25% of the CPU time per
# detectron2 X-101-32x8d forward at 800x1216 (docs/benchmarks.md, "Freed memory").
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_BLOCK = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap
_NO_TRIM = 2**31 - 1

#: The same allocator setting as :func:`keep_freed_memory`, for the environment of a new process.
KEEP_FREED_MEMORY_ENV: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(_KEPT_BLOCK),
    "MALLOC_TRIM_THRESHOLD_": str(_NO_TRIM),
}


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse instead of returning it to the
    kernel: no page faults for activations after the first pass. The cost: resident memory stays
    at the process's peak, for the rest of the process's life. Idempotent.

    Returns:
        True where it took effect (Linux with glibc); False elsewhere (nothing is changed).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = mallopt(_M_MMAP_THRESHOLD, _KEPT_BLOCK)
    untrimmed = mallopt(_M_TRIM_THRESHOLD, _NO_TRIM)
    return bool(kept and untrimmed)


_keep_freed_memory = keep_freed_memory  # configure_process's argument has the same name


class _NoCudaRuntimeLine(logging.Filter):
    """Drops torch's ``No CUDA runtime is found`` line (logged when detectron2's environment
    report imports ``torch.utils.cpp_extension`` on a machine without CUDA); keeps the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_third_party_notices() -> None:
    """Hide exactly the third-party notices every command printed before its own output, each
    matched by message and by the module it is attributed to; every other warning still shows.
    Idempotent. For a command's entry point (the notices are not the user's to act on there)."""
    # detectron2 0.6's model_zoo imports pkg_resources (setuptools' notice, attributed to the
    # detectron2 module that imports model_zoo first).
    warnings.filterwarnings(
        "ignore",
        message=r"pkg_resources is deprecated as an API",
        category=UserWarning,
        module=r"detectron2(\.|$)",
    )
    # torch.meshgrid without indexing=, called by detectron2 0.6's anchor generator.
    warnings.filterwarnings(
        "ignore",
        message=r"torch\.meshgrid: in an upcoming release, it will be required",
        category=UserWarning,
    )
    # PIL's notice on opening an image above its MAX_IMAGE_PIXELS ("could be decompression bomb
    # DOS attack"): the commands read images through resnext_det.data.images, which refuses every
    # such image itself (its limit equals PIL's) with one line that names the file and its size.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    cpp = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeLine) for f in cpp.filters):
        cpp.addFilter(_NoCudaRuntimeLine())


#: "1": the console shows DEBUG records too (``--verbose``); inherited by worker processes.
VERBOSE_ENV = "RESNEXT_DET_VERBOSE"
_CONSOLE_LOGGERS = ("detectron2", "fvcore", "resnext_det")


def set_console_verbosity(verbose: bool | None = None) -> None:
    """The console handlers of detectron2's, fvcore's and this project's loggers show INFO and
    above; with ``verbose`` (default: :data:`VERBOSE_ENV`) DEBUG too: parameter-loading tables,
    model printouts. Log files keep everything. Call after the handlers are set up
    (detectron2's ``setup_logger``); ``verbose=True`` also sets :data:`VERBOSE_ENV` for the
    process's workers."""
    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV) == "1"
    elif verbose:
        os.environ[VERBOSE_ENV] = "1"
    for name in _CONSOLE_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:  # not a FileHandler (a subclass)
                handler.setLevel(logging.DEBUG if verbose else logging.INFO)


def configure_process(
    *, num_threads: int = 0, keep_freed_memory: bool = False, quiet: bool = False
) -> dict[str, object]:
    """Set this process's torch thread count, allocator and notices; what a command's entry
    point calls (and a library user may, on purpose).

    Args:
        num_threads: torch intra-op threads; 0 leaves the count as it is.
        keep_freed_memory: :func:`keep_freed_memory` (glibc; elsewhere logged and skipped).
        quiet: :func:`quiet_third_party_notices`.

    Returns:
        what is now in force: ``{"num_threads": int, "keep_freed_memory": bool}``.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an integer >= 0 (0: unchanged); got {num_threads!r}")
    if num_threads and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    kept = False
    if keep_freed_memory:
        kept = _keep_freed_memory()
        if not kept:
            logger.info("keep_freed_memory: not glibc, the allocator is left as it is")
    if quiet:
        quiet_third_party_notices()
    return {"num_threads": torch.get_num_threads(), "keep_freed_memory": kept}
