"""One live run per OUTPUT_DIR: a lock that the operating system releases when its holder dies.

Two trainings writing into one folder corrupt it (one run's ``model_final.pth`` beside the other's
``config.yaml``), and a ``--resume`` removes the temporaries of the run that is still saving. A
run therefore holds ``OUTPUT_DIR/.lock`` from before its first write to its end: an exclusive
``fcntl.flock`` on an open file, which the kernel drops when the process ends in any way (a
SIGKILL, the OOM killer, a node that loses power), so a dead run never leaves the folder stuck and
nobody has to delete a stale lock file. The file holds the holder's pid, host and start time, for
the error a second run gets.

``flock`` works on local filesystems and on NFSv4 (where Linux maps it to a byte-range lock); on
filesystems without locks (some FUSE mounts) taking it is an error that says so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import ResNeXtDetError

__all__ = ["LOCK_NAME", "OutputDirInUseError", "OutputDirLock", "lock_output_dir"]

LOCK_NAME = ".lock"

# The locks this process holds, by folder: taking one again is a no-op (the trainer and
# evaluation take the lock that setup() already took), and a folder is locked once per process.
_HELD: dict[str, OutputDirLock] = {}


class OutputDirInUseError(ResNeXtDetError, RuntimeError):
    """Another live run holds the OUTPUT_DIR; nothing was written there."""


def _holder(path: Path) -> str:
    # The holder writes its record just after taking the lock: give it a moment.
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text(encoding="utf-8"))
            return (
                f"pid {record['pid']} on {record['host']} (since {record['started']}: "
                f"{record['command']})"
            )
        time.sleep(0.05)
    return "a process that has not recorded itself yet"


class OutputDirLock:
    """The exclusive lock on ``output_dir``; see the module docstring.

    Args:
        output_dir: the run's folder (created if missing).

    Raises:
        OutputDirInUseError: another process holds it; the message names the folder and the
            holder's pid, host, start time and command.
        OSError: the filesystem cannot lock files.
    """

    def __init__(self, output_dir: str | os.PathLike):
        import fcntl

        self.output_dir = Path(os.path.abspath(output_dir))
        self.path = self.output_dir / LOCK_NAME
        self.output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # close-on-exec by default
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OSError(
                    exc.errno, f"cannot lock {self.path} (does this filesystem support flock?)"
                ) from exc
            raise OutputDirInUseError(
                f"OUTPUT_DIR {self.output_dir} is in use by another run: {_holder(self.path)} "
                f"holds {self.path}. Wait for it to end or stop it (the lock goes with the "
                "process), or choose another OUTPUT_DIR."
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Give the folder up (a process that ends releases it anyway)."""
        if self._fd is None:
            return
        _HELD.pop(os.fspath(self.output_dir), None)
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None


def lock_output_dir(output_dir: str | os.PathLike) -> OutputDirLock | None:
    """Hold ``output_dir`` for this process (until :meth:`OutputDirLock.release` or its end).

    Returns the lock, the one this process already holds on that folder, or None for an empty or
    remote (``scheme://``) folder, which cannot be locked.

    Raises:
        OutputDirInUseError: another live process holds the folder.
    """
    if not output_dir or "://" in os.fspath(output_dir) or os.name != "posix":
        return None  # (Windows has no flock; its runs are not locked)
    key = os.path.abspath(output_dir)
    if key not in _HELD:
        _HELD[key] = OutputDirLock(key)
    return _HELD[key]
