"""Atomic file writes: a reader, or a resumed run, sees the old file or the whole new one.

A file written in place and interrupted (a kill, a full disk, a power loss) is left half written,
and the next reader fails on it or, worse, reads it. Every checkpoint, export, dataset json and
report of this package is written here instead: to a temporary file in the same directory (same
filesystem, so the rename cannot turn into a copy), flushed and fsynced, renamed over the target
with ``os.replace`` (atomic on POSIX and Windows), and the directory fsynced so that the rename
itself survives a power loss. :func:`staged_files` does the same for several files that belong
together (an export and its metadata sidecar, the files of a report): none is renamed until all
were written.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "PAUSE_ENV",
    "TMP_MARK",
    "AtomicWriteError",
    "atomic_write",
    "staged_files",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

# Temporary files are named ".<name>.tmp-<pid>-<random>": hidden, next to their target, and
# recognisable, so that the leftovers of a killed writer can be found and removed.
TMP_MARK = ".tmp-"

# For crash tests only: "SECONDS" or "SECONDS:GLOB" makes atomic_write sleep after a temporary
# file is written and fsynced and before it is renamed into place (for files whose name matches
# GLOB, default all), so that a test can SIGKILL the process inside that window.
PAUSE_ENV = "RESNEXT_DET_TEST_PAUSE_BEFORE_RENAME"

logger = logging.getLogger(__name__)


class AtomicWriteError(OSError):
    """A file could not be written; whatever was at its path before is intact.

    ``errno`` is the cause's (``ENOSPC``, ``EDQUOT``, ``EIO``, ``EROFS``, ...), so callers can
    tell a full disk from other failures; the message names the path.
    """

    #: What to do about a full disk; subclasses name their own remedy (e.g. OUTPUT_DIR).
    disk_full_hint = "free space there or write elsewhere"

    @classmethod
    def from_os_error(cls, path: str | os.PathLike, exc: OSError) -> AtomicWriteError:
        hint = (
            f" (the disk is full: {cls.disk_full_hint})"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else ""
        )
        return cls(exc.errno, f"Could not write {os.fspath(path)}: {exc.strerror or exc}{hint}")


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _create(tmp: Path) -> int:
    # O_EXCL: never write into a file someone else made. Mode 0o666 leaves the permissions to the
    # umask, as for any file the user writes (mkstemp's 0600 would make exports private).
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)


def _fsync_dir(directory: str | os.PathLike) -> None:
    # A rename is only durable once the directory entry is on disk (POSIX). Windows cannot open a
    # directory for fsync, and its os.replace is durable enough.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _test_pause(tmp: Path, path: Path) -> None:
    value = os.environ.get(PAUSE_ENV)
    if not value:
        return
    seconds, _, pattern = value.partition(":")
    if fnmatch.fnmatch(path.name, pattern or "*"):
        logger.warning(f"{PAUSE_ENV}={value}: pausing before renaming {tmp} -> {path}")
        time.sleep(float(seconds))


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], Any],
    *,
    error: type[AtomicWriteError] = AtomicWriteError,
    durable: bool = True,
) -> Path:
    """Write ``path`` through ``write(file)``: it is either the old file or the whole new one.

    Args:
        path: destination file; its directory is created if missing.
        write: called with the open binary temporary file; writes the content.
        error: the :class:`AtomicWriteError` subclass to raise.
        durable: fsync the file and the directory (a power loss keeps the new file). False
            skips both (the rename still protects against kills and errors): for many small files
            that are cheap to make again, such as generated images, where fsync doubles the time.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        AtomicWriteError: (or ``error``) creating, writing, fsyncing or renaming failed; the
            temporary file is removed and ``path`` is untouched. Other exceptions from ``write``
            propagate unchanged, after the same clean-up.
    """
    path = Path(path)
    dest = Path(os.path.abspath(path))
    tmp = _temp_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(_create(tmp), "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        _test_pause(tmp, dest)
        os.replace(tmp, dest)
        if durable:
            _fsync_dir(dest.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, AtomicWriteError):
            raise error.from_os_error(path, exc) from exc
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), durable=durable)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = None) -> Path:
    """Write ``data`` as json (UTF-8, one trailing newline) to ``path`` atomically.

    Without ``indent`` the separators are compact and fixed, so the same data always gives
    byte-identical files (dataset jsons are compared and hashed).
    """
    separators = (",", ":") if indent is None else None
    text = json.dumps(data, indent=indent, separators=separators, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")


@contextlib.contextmanager
def staged_files(
    paths: Sequence[str | os.PathLike], *, error: type[AtomicWriteError] = AtomicWriteError
) -> Iterator[list[Path]]:
    """Several files that belong together, written all or none.

    Yields one empty temporary file per path (same directory, permissions from the umask) for the
    block to write, by path, with any writer (``torch.jit.save``, ``fig.savefig``, onnx). When the
    block succeeds, each is fsynced and renamed onto its path in order; when it raises, they are
    all removed and no destination is touched.

    Example::

        with staged_files([out, sidecar]) as (tmp_out, tmp_sidecar):
            torch.save(state, tmp_out)
            tmp_sidecar.write_text(json.dumps(metadata))

    Raises:
        AtomicWriteError: (or ``error``) an ``OSError`` while writing or renaming, naming the
            destinations and keeping the cause's errno. Other exceptions propagate unchanged.
    """
    dests = [Path(os.path.abspath(p)) for p in paths]
    temps: list[Path] = []
    names = ", ".join(map(os.fspath, paths))
    try:
        for dest in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_path(dest)
            os.close(_create(tmp))
            temps.append(tmp)
        yield list(temps)
        for tmp in temps:
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, dest in zip(temps, dests):
            os.replace(tmp, dest)
        for directory in dict.fromkeys(dest.parent for dest in dests):
            _fsync_dir(directory)
    except OSError as exc:
        if isinstance(exc, AtomicWriteError):
            raise
        raise error.from_os_error(names, exc) from exc
    finally:
        for tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
