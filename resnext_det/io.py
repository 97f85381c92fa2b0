"""Atomic file writes: a reader, or a resumed run, sees the old file or the whole new one.

A file written in place and interrupted (a kill, a full disk, a power loss) is left half written,
and the next reader fails on it or, worse, reads it. Every checkpoint, export, dataset json and
report of this package is written here instead: to a temporary file in the same directory (same
filesystem, so the rename cannot turn into a copy), flushed and fsynced, renamed over the target
with ``os.replace`` (atomic on POSIX and Windows), and the directory fsynced so that the rename
itself survives a power loss. :func:`staged_files` does the same for several files that belong
together (an export and its metadata sidecar, the files of a report): none is renamed until all
were written, and a failed rename puts back the ones before it.

A full disk is reported as one (``errno`` ``ENOSPC``, the path, "No space left on device") at any
fill level, also when the writer hides it: torch's zip writer turns it into "unexpected pos" at
some fill levels, and writers that open the path themselves lose the errno.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import ResNeXtDetError

__all__ = [
    "PAUSE_ENV",
    "TMP_MARK",
    "AtomicWriteError",
    "OutputLocationError",
    "atomic_write",
    "check_output_location",
    "utf8_name",
    "file_name_for",
    "path_inside",
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


class OutputLocationError(ResNeXtDetError, ValueError):
    """An output that would overwrite or mix with an input, or a name that would leave its folder.

    Raised before anything is written; the message names the output, the input and the flag.
    """


def _resolved(path: str | os.PathLike) -> Path:
    # realpath: "..", symbolic links and a missing tail resolved the same way on both sides.
    return Path(os.path.realpath(os.fspath(path)))


def check_output_location(
    output: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    *,
    what: str = "output",
) -> Path:
    """Refuse an output location (file or folder) that is, contains, or lies inside an input.

    The one guard every writer of user-named outputs calls before any work, so that nothing a
    user gives can overwrite their data: ``--output`` the folder of the input images (every
    picture would replace its image), the input file itself, a folder above the inputs, or a
    folder inside an input folder (the next run would read the outputs as inputs). Paths are
    compared after resolving ``..`` and symbolic links; an existing output file also by inode
    (a hard link to an input).

    Args:
        output: the file or folder about to be written.
        inputs: the files and folders the command reads.
        what: how the message names the output (a flag, e.g. ``"--output"``).

    Returns:
        ``output`` resolved.

    Raises:
        OutputLocationError: naming the output, the input and how they overlap.
    """
    out = _resolved(output)
    given = list(inputs)
    resolved = [_resolved(p) for p in given]
    checks = (
        ("is the input", lambda src: out == src or (out.is_file() and _same_inode(out, src))),
        ("contains the input", lambda src: src.is_relative_to(out)),
        ("lies inside the input folder", lambda src: out.is_relative_to(src)),
    )
    for how, overlaps in checks:  # the most direct overlap is the one named
        for p, src in zip(given, resolved):
            if overlaps(src):
                raise OutputLocationError(
                    f"{what} {os.fspath(output)!r} {how} {os.fspath(p)!r}: writing there could "
                    "overwrite or mix with what is read; choose a folder apart from the inputs"
                )
    return out


def utf8_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` is valid UTF-8, as a json file holding it needs (a name with other bytes
    comes back from the filesystem with surrogate escapes, which no json text can hold)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# Kept as they are in a file name made from a user-given name; everything else is %XX-encoded.
_KEPT_IN_NAMES = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_MAX_NAME_BYTES = 200  # room for a prefix and a suffix within the usual 255-byte limit


def file_name_for(name: str) -> str:
    """A user-given name (a model's, a run's) as one file name, the same way everywhere.

    Letters, digits and ``._-`` stay; every other character (``/``, ``\\``, ``%``, spaces,
    newlines, non-ASCII) and a leading ``.`` become ``%XX`` per UTF-8 byte, as in a URL. So the
    mapping is injective (``a/b`` -> ``a%2Fb``, ``a_b`` -> ``a_b``: two names never share a
    file), the result is one path component that is never empty, hidden, ``.`` or ``..``, and
    it never holds ``~`` or ``@`` (free for callers to join parts with). A result over 200 bytes
    is cut to 160 and ends in ``~`` and 32 hex digits of the name's sha256 (still injective,
    short of a sha256 collision).

    Raises:
        ValueError: ``name`` is not a non-empty string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"a name to make a file name from must be a non-empty string; got {name!r}"
        )
    parts = []
    for i, ch in enumerate(name):
        if ch in _KEPT_IN_NAMES and not (i == 0 and ch == "."):
            parts.append(ch)
        else:
            parts.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    text = "".join(parts)
    if len(text) > _MAX_NAME_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        text = f"{text[:160]}~{digest}"
    return text


def path_inside(folder: str | os.PathLike, relative: str | os.PathLike, *, what: str = "") -> Path:
    """``folder / relative``, refused unless it stays inside ``folder``.

    ``relative`` must be a relative path of plain components (no ``..``, not absolute); the
    result is checked again after resolving symbolic links already in ``folder``. For names
    made by :func:`file_name_for` this always holds; the check keeps every writer honest.

    Raises:
        OutputLocationError: ``relative`` would leave ``folder`` (``what`` names where it came
            from).
    """
    rel = os.fspath(relative)
    parts = Path(rel).parts
    base = _resolved(folder)
    target = _resolved(Path(folder, rel))
    if (
        not parts
        or os.path.isabs(rel)
        or any(p in ("", ".", "..") for p in parts)
        or target == base
        or not target.is_relative_to(base)
    ):
        where = f" ({what})" if what else ""
        raise OutputLocationError(
            f"{rel!r}{where} would be written outside {os.fspath(folder)!r}; a name inside the "
            "output folder is needed"
        )
    return Path(folder, rel)


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


class _RecordingFile:
    """The file a writer is given: it remembers the first ``OSError`` of a write.

    torch's zip writer (``torch.save`` to a file object) turns the ``ENOSPC`` of a full disk into
    ``RuntimeError: [enforce fail at inline_container.cc:...] unexpected pos ...`` at some fill
    levels; the recorded error says what really happened.
    """

    def __init__(self, file: IO[bytes]):
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int | None:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


# A writer that failed while the disk had less than this left was most likely stopped by the full
# disk (writers that open the path themselves, such as torch.jit.save, lose the errno).
_FULL_MARGIN = 64 << 10


def _no_space_left(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: Windows has no statvfs
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail  # root may use the reserved blocks
    return free * st.f_frsize < _FULL_MARGIN


def _os_error_behind(
    exc: Exception, recorded: OSError | None, directories: Iterable[Path]
) -> Exception:
    """The ``OSError`` a writer's exception stands for (a recorded one, or a full disk), else
    ``exc`` itself. Call it before the temporary files are removed (they hold the space)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    if recorded is not None:
        return recorded
    if any(_no_space_left(d) for d in dict.fromkeys(directories)):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return exc


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
        with os.fdopen(_create(tmp), "wb") as raw:
            f = _RecordingFile(raw)
            try:
                write(f)  # type: ignore[arg-type]
            except Exception as exc:
                behind = _os_error_behind(exc, f.error, [dest.parent])
                if behind is exc:
                    raise
                raise behind from exc
            if f.error is not None:  # a writer that swallowed its file's error
                raise f.error
            raw.flush()
            if durable:
                os.fsync(raw.fileno())
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
    block succeeds, each is fsynced and renamed onto its path in order, each file it replaces
    kept (hard-linked aside) until every rename has succeeded: if one fails (a folder where a
    file should go, a read-only entry), the ones already renamed are put back as they were. When
    the block raises, the temporaries are removed and no destination is touched.

    Example::

        with staged_files([out, sidecar]) as (tmp_out, tmp_sidecar):
            torch.save(state, tmp_out)
            tmp_sidecar.write_text(json.dumps(metadata))

    Raises:
        AtomicWriteError: (or ``error``) an ``OSError`` while writing or renaming (or a writer's
            failure on a full disk), naming the destinations and keeping the cause's errno.
            Other exceptions propagate unchanged.
    """
    dests = [Path(os.path.abspath(p)) for p in paths]
    temps: list[Path] = []
    names = ", ".join(map(os.fspath, paths))
    try:
        modes: list[int] = []
        for dest in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_path(dest)
            fd = _create(tmp)
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))  # 0o666 less the umask
            os.close(fd)
            temps.append(tmp)
        try:
            yield list(temps)
        except Exception as exc:
            behind = _os_error_behind(exc, None, (d.parent for d in dests))
            if behind is exc:
                raise
            raise behind from exc
        for tmp, mode in zip(temps, modes):
            # A writer that replaces the path it is given (safetensors' save_file writes its own
            # 0600 file) would make the output private: give it the umask's mode back.
            if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
                os.chmod(tmp, mode)
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _replace_all(temps, dests)
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


def _replace_all(temps: Sequence[Path], dests: Sequence[Path]) -> None:
    """``os.replace`` each temporary onto its destination, or none of them.

    What a destination held is first hard-linked to a backup name (the rename then swaps the
    entry atomically, so a reader never finds it missing; without hard links it is renamed
    aside); on a failure the earlier destinations get their backups back, or are removed when
    they did not exist. A kill in the middle (microseconds) can still leave a mixed group: only
    swapping a whole folder would close that window.
    """
    done: list[tuple[Path, Path | None]] = []  # (destination, its backup or None if it was new)
    try:
        for tmp, dest in zip(temps, dests):
            backup = None
            if os.path.lexists(dest) and not os.path.isdir(dest):
                backup = _temp_path(dest)
                try:
                    os.link(dest, backup, follow_symlinks=False)
                except OSError:
                    os.replace(dest, backup)
            try:
                os.replace(tmp, dest)
            except OSError as exc:
                if backup is not None and not os.path.lexists(dest):
                    os.replace(backup, dest)  # the fallback had moved it aside
                elif backup is not None:
                    os.unlink(backup)
                raise OSError(
                    exc.errno, f"{exc.strerror}: {dest} (none of the group was changed)"
                ) from exc
            done.append((dest, backup))
    except OSError:
        for dest, backup in reversed(done):
            try:
                if backup is None:
                    os.unlink(dest)
                else:
                    os.replace(backup, dest)
            except OSError as undo:  # nothing more can be done than saying so
                logger.error(f"could not restore {dest} after a failed group write: {undo}")
        raise
    for _, backup in done:
        if backup is not None:
            with contextlib.suppress(OSError):
                os.unlink(backup)
