"""Where the benchmark's variants run: in this process, or in a child process started with the
allocator setting of their side's tools, so that one run can time each path the way it is shipped.

Keeping freed memory (:func:`resnext_det.runtime.keep_freed_memory`) is a setting of the whole
process: the project's commands apply it for CPU training and inference, detectron2's tools do
not. Timing both in one process would give one of them the other's allocator. So a variant whose
side needs the other setting runs in a child process *started* with it: with
:data:`resnext_det.runtime.KEEP_FREED_MEMORY_ENV` in its environment (which glibc reads when the
process starts, as for anyone who starts the project's tools so), or with those variables taken
out. The parent asks each process for one call at a time, so the rounds stay interleaved and
only one process runs at once.

A child's word is not taken for its allocator: each measures what its own does with a freed
block (:func:`freed_memory_probe`), fresh, before it builds anything, and the records carry that
measurement. This process is taken to have the setting it was started with
(:func:`started_keeping_freed_memory`).

Both kinds of runner have the same methods: ``warm(n)``, ``check()``, ``memory()`` and
``timed()``, which returns one call's ``(wall s, process CPU s, minor page faults)`` measured
where the call ran, so that the pipe's latency is not in the figures.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from resnext_det.runtime import KEEP_FREED_MEMORY_ENV

from .measure import PeakProbe, minor_faults, peak_memory, sync

__all__ = [
    "LocalRunner",
    "AllocatorProcess",
    "BenchmarkWorkerError",
    "allocator_env",
    "freed_memory_probe",
    "started_keeping_freed_memory",
    "PROBE_BYTES",
]

_ROOT = Path(__file__).resolve().parents[1]  # the checkout, where ``benchmarks`` is importable

# Above glibc's largest dynamic mmap threshold (32 MiB on 64-bit): by default such a block is
# mmapped when allocated and unmapped when freed, whatever was freed before.
PROBE_BYTES = 64 << 20


class BenchmarkWorkerError(RuntimeError):
    """A child process that times variants failed; carries its traceback."""


def freed_memory_probe(nbytes: int = PROBE_BYTES, passes: int = 4) -> dict:
    """What this process's allocator does with a freed block of ``nbytes``: a tensor of that
    size is allocated, written and freed ``passes`` times, counting the minor page faults of
    each pass.

    Returned to the kernel (glibc's default), the block is unmapped when freed and every pass
    faults every page in again, as the first did; kept, the passes after the first reuse the
    pages (none faulted in, though one early repeated pass may still fault it in once more:
    seen with glibc 2.36, hence the fewest of the repeated passes). The verdict is the repeated
    passes against the first, so huge pages, which cut all counts alike, do not change it.

    Returns:
        ``{"freed_memory": "kept" | "returned" | "unknown", "pages", "first_faults",
        "repeat_faults"}`` (the fewest faults of a repeated pass; "unknown" where page faults
        cannot be counted).
    """
    pages = nbytes // (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096)
    if minor_faults() is None:
        return {"freed_memory": "unknown", "pages": pages, "first_faults": None,
                "repeat_faults": None}  # fmt: skip
    faults = []
    for _ in range(passes):
        start = minor_faults()
        torch.empty(nbytes // 4, dtype=torch.float32).fill_(1.0)
        faults.append(minor_faults() - start)
    repeat = min(faults[1:])
    return {
        "freed_memory": "kept" if 4 * repeat <= faults[0] else "returned",
        "pages": pages,
        "first_faults": faults[0],
        "repeat_faults": repeat,
    }


def started_keeping_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Whether this process (``environ``: its environment) was started with the allocator
    setting :data:`~resnext_det.runtime.KEEP_FREED_MEMORY_ENV`. What a process's allocator does
    later cannot be read back (``mallopt`` has no getter), and measuring it is reliable only in a
    fresh process: a used heap may serve the probe's block from free room it already has. So
    the benchmark takes its own process to have the setting it was started with (the tools
    leave it at that) and measures its children, which it starts fresh."""
    environ = os.environ if environ is None else environ
    return all(environ.get(k) == v for k, v in KEEP_FREED_MEMORY_ENV.items())


def allocator_env(keep_freed_memory: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) for a new process whose allocator keeps
    freed memory (:data:`~resnext_det.runtime.KEEP_FREED_MEMORY_ENV` set) or does what glibc does
    by default (those variables taken out)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in KEEP_FREED_MEMORY_ENV}  # fmt: skip
    if keep_freed_memory:
        env.update(KEEP_FREED_MEMORY_ENV)
    return env


def _timed(device: torch.device, step) -> tuple[float, float, int | None]:
    sync(device)
    start, start_cpu, start_faults = time.perf_counter(), time.process_time(), minor_faults()
    step()
    sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return wall, cpu, None if start_faults is None else minor_faults() - start_faults


class LocalRunner:
    """A variant run in this process, whose allocator does ``freed_memory`` (measured)."""

    def __init__(self, variant, device: torch.device, freed_memory: str, verbose: bool = False):
        self.variant, self.device, self.freed_memory = variant, device, freed_memory
        self.setting, self.verbose = variant.setting, verbose

    def warm(self, n: int) -> None:
        for _ in range(n):
            self.variant.step()
        sync(self.device)

    def check(self):
        return self.variant.check()

    def memory(self) -> tuple[float | None, str]:
        return peak_memory(self.device, self.variant.step, verbose=self.verbose)

    def timed(self) -> tuple[float, float, int | None]:
        return _timed(self.device, self.variant.step)


class _RemoteRunner:
    """A variant run in an :class:`AllocatorProcess`."""

    def __init__(self, process: AllocatorProcess, setting):
        self.process, self.setting, self.device = process, setting, process.device
        self.freed_memory = process.freed_memory  # what the child measured, not what it was told

    def warm(self, n: int) -> None:
        self.process.call("warm", self.setting.name, n)

    def check(self):
        return self.process.call("check", self.setting.name)

    def memory(self) -> tuple[float | None, str]:
        return self.process.call("memory", self.setting.name)

    def timed(self) -> tuple[float, float, int | None]:
        return self.process.call("timed", self.setting.name)


class _Pipe:
    """Pickled messages over two byte streams (a child's stdin and its private stdout)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    def send(self, obj) -> None:
        pickle.dump(obj, self.writer, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer.flush()

    def recv(self):
        return pickle.load(self.reader)


class AllocatorProcess:
    """A child process started with the allocator setting ``keep_freed_memory`` asks for (in
    its environment: :func:`allocator_env`), that builds ``case``'s variants of ``settings``
    (resolved by the caller) from the same seed as the parent (so from the same weights: the
    parent checks a checksum of them) and runs one command at a time; also its own
    :class:`PeakProbe`. ``freed_memory`` and ``probe`` are what the child measured of its
    allocator (:func:`freed_memory_probe`) before building anything.

    ``case`` is the keyword arguments of :func:`benchmarks.variants.build_variants`.
    Use as a context manager: the child is stopped on the way out, errors or not.
    """

    def __init__(
        self,
        case: dict,
        settings: list,
        *,
        keep_freed_memory: bool,
        threads: int,
        peak: bool,
        clock: str,
        verbose: bool = False,
    ):
        self.device = torch.device(case["device"])
        self.keep_freed_memory = keep_freed_memory
        env = allocator_env(keep_freed_memory)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.pid = self._process.pid
        self._pipe = _Pipe(self._process.stdout, self._process.stdin)
        try:
            self._pipe.send(
                dict(
                    case=case,
                    settings=settings,
                    threads=threads,
                    peak=peak,
                    clock=clock,
                    verbose=verbose,
                )  # fmt: skip
            )
            # What the child sends once built.
            self.probe, self.checksum = self._receive("start")
        except BaseException:
            self.close()
            raise
        self.freed_memory = self.probe["freed_memory"]
        self.runners = [_RemoteRunner(self, s) for s in settings]

    @property
    def returncode(self) -> int | None:
        """The child's exit status; None while it runs."""
        return self._process.poll()

    def call(self, *command):
        try:
            self._pipe.send(command)
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise BenchmarkWorkerError(
                f"benchmark: the child process is gone (exit code {self._process.poll()})"
            ) from exc
        return self._receive(" ".join(map(str, command)))

    def _receive(self, what: str):
        try:
            status, value = self._pipe.recv()
        except (EOFError, ConnectionResetError, pickle.UnpicklingError) as exc:
            raise BenchmarkWorkerError(
                f"benchmark: the child process died during {what!r} "
                f"(exit code {self._process.wait()}; out of memory?)"
            ) from exc
        if status == "error":
            raise BenchmarkWorkerError(f"benchmark: the child process failed on {what}:\n{value}")
        return value

    def probe_round(self) -> None:
        self.call("probe_round")

    def probe_summary(self) -> dict:
        return self.call("probe_summary")

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(OSError):  # BrokenPipeError included
                self._pipe.send(("stop",))
                self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def __enter__(self) -> AllocatorProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(
    pipe: _Pipe, case: dict, settings: list, threads: int, peak: bool, clock: str, verbose: bool
) -> None:
    """The child's loop: measure the allocator, build, then answer commands until ``stop`` (or
    the pipe closes)."""
    from resnext_det.runtime import configure_process

    from .variants import build_variants

    try:
        # The child is the benchmark's own process: its thread count is the parent's; its
        # allocator is what it was started with, measured before anything is built.
        configure_process(num_threads=threads, quiet=not verbose)
        probe = freed_memory_probe()
        variants, checksum, _ = build_variants(**case, settings=settings)
        device = torch.device(case["device"])
        by_name = {
            v.setting.name: LocalRunner(v, device, probe["freed_memory"], verbose) for v in variants
        }
        peak_probe = PeakProbe(device, clock=clock) if peak else None
        if peak_probe:
            peak_probe.warmup()
        pipe.send(("ok", (probe, checksum)))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        pipe.send(("error", traceback.format_exc()))
        return
    commands = {
        "warm": lambda name, n: by_name[name].warm(n),
        "check": lambda name: by_name[name].check(),
        "memory": lambda name: by_name[name].memory(),
        "timed": lambda name: by_name[name].timed(),
        "probe_round": lambda: peak_probe.round() if peak_probe else None,
        "probe_summary": lambda: peak_probe.summary() if peak_probe else {},
    }
    serve_commands(pipe, commands)


def serve_commands(pipe: _Pipe, commands: dict) -> None:
    """A child's loop: run each ``(command, *args)`` received and send back ``("ok", result)``
    or ``("error", traceback)``, until ``"stop"`` or the parent closes the pipe."""
    while True:
        try:
            command, *args = pipe.recv()
        except EOFError:
            return
        if command == "stop":
            return
        try:
            pipe.send(("ok", commands[command](*args)))
        except Exception:  # noqa: BLE001
            pipe.send(("error", traceback.format_exc()))


def child_pipe() -> _Pipe:
    """The child's end of the pipe: messages on stdin and on the original stdout, fd 1 then
    pointed at stderr so that what the libraries print cannot end up in the messages."""
    reader = sys.stdin.buffer
    writer = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return _Pipe(reader, writer)


def child_main() -> None:
    """``python -m benchmarks.child``: the child's entry point. Messages come on stdin and
    go out on the original stdout; fd 1 then points at stderr, so that what the libraries print
    cannot end up in the messages."""
    pipe = child_pipe()
    try:
        args = pipe.recv()
    except EOFError:
        return
    _serve(pipe, **args)
