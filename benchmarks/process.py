"""Where the benchmark's variants run: in this process, or in a child process whose allocator
keeps freed memory, so that one run can time each path the way it is shipped.

Keeping freed memory (:func:`resnext_det.speed.keep_freed_memory`) is a setting of the whole
process: the project's CPU trainer and CPU inference apply it, detectron2's tools do not. Timing
both in one process would give one of them the other's allocator; a child process per allocator
setting keeps the rounds interleaved (the parent asks each process for one call at a time, so
only one runs at once) while each path keeps its own allocator.

Both kinds of runner have the same methods: ``warm(n)``, ``check()``, ``memory()`` and
``timed()``, which returns one call's ``(wall s, process CPU s, minor page faults)`` measured
where the call ran, so that the pipe's latency is not in the figures.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
import traceback

import torch

from .measure import PeakProbe, minor_faults, peak_memory, sync

__all__ = ["LocalRunner", "KeptMemoryProcess", "BenchmarkWorkerError"]


class BenchmarkWorkerError(RuntimeError):
    """The child process that times the memory-keeping variants failed; carries its traceback."""


def _timed(device: torch.device, step) -> tuple[float, float, int | None]:
    sync(device)
    start, start_cpu, start_faults = time.perf_counter(), time.process_time(), minor_faults()
    step()
    sync(device)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return wall, cpu, None if start_faults is None else minor_faults() - start_faults


class LocalRunner:
    """A variant run in this process."""

    def __init__(self, variant, device: torch.device, freed_memory: str):
        self.variant, self.device, self.freed_memory = variant, device, freed_memory
        self.setting = variant.setting

    def warm(self, n: int) -> None:
        for _ in range(n):
            self.variant.step()
        sync(self.device)

    def check(self):
        return self.variant.check()

    def memory(self) -> tuple[float | None, str]:
        return peak_memory(self.device, self.variant.step)

    def timed(self) -> tuple[float, float, int | None]:
        return _timed(self.device, self.variant.step)


class _RemoteRunner:
    """A variant run in a :class:`KeptMemoryProcess`."""

    def __init__(self, process: KeptMemoryProcess, setting):
        self.process, self.setting, self.device = process, setting, process.device
        # Off glibc the child cannot keep it either, and the records say so.
        self.freed_memory = "kept" if process.kept else "returned"

    def warm(self, n: int) -> None:
        self.process.call("warm", self.setting.name, n)

    def check(self):
        return self.process.call("check", self.setting.name)

    def memory(self) -> tuple[float | None, str]:
        return self.process.call("memory", self.setting.name)

    def timed(self) -> tuple[float, float, int | None]:
        return self.process.call("timed", self.setting.name)


class KeptMemoryProcess:
    """A spawned child process that keeps freed memory, builds ``case``'s variants of
    ``settings`` (resolved for the case) from the same seed as the parent (so from the same
    weights: the parent checks a checksum of them), and runs one command at a time; also its own
    :class:`PeakProbe`.

    ``case`` is the keyword arguments of :func:`resnext_det.benchmark.variants.build_variants`.
    Use as a context manager: the child is stopped on the way out, errors or not.
    """

    def __init__(self, case: dict, settings: list, threads: int, peak: bool, clock: str):
        self.device = torch.device(case["device"])
        ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve,
            args=(child, case, settings, threads, peak, clock),
            daemon=True,
        )
        self._process.start()
        child.close()
        try:
            self.kept, self.checksum = self._receive("start")  # what the child sends once built
        except BaseException:
            self.close()
            raise
        self.runners = [_RemoteRunner(self, s) for s in settings]

    def call(self, *command):
        try:
            self._conn.send(command)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise BenchmarkWorkerError(
                f"benchmark: the memory-keeping child process is gone (exit code "
                f"{self._process.exitcode})"
            ) from exc
        return self._receive(command)

    def _receive(self, command):
        try:
            status, value = self._conn.recv()
        except (EOFError, ConnectionResetError) as exc:
            raise BenchmarkWorkerError(
                f"benchmark: the memory-keeping child process died during {command[0]!r} "
                f"(exit code {self._process.exitcode}; out of memory?)"
            ) from exc
        if status == "error":
            raise BenchmarkWorkerError(
                f"benchmark: the memory-keeping child process failed on {command}:\n{value}"
            )
        return value

    def probe_round(self) -> None:
        self.call("probe_round")

    def probe_summary(self) -> dict:
        return self.call("probe_summary")

    def close(self) -> None:
        if self._process.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("stop",))
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()

    def __enter__(self) -> KeptMemoryProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(conn, case: dict, settings: list, threads: int, peak: bool, clock: str) -> None:
    """The child's loop: build, then answer commands until ``stop`` (or the pipe closes)."""
    from resnext_det.speed import keep_freed_memory

    from .variants import build_variants

    try:
        torch.set_num_threads(threads)
        kept = keep_freed_memory()
        variants, checksum, _ = build_variants(**case, settings=settings)
        device = torch.device(case["device"])
        by_name = {v.setting.name: LocalRunner(v, device, "kept") for v in variants}
        probe = PeakProbe(device, clock=clock) if peak else None
        if probe:
            probe.warmup()
        conn.send(("ok", (kept, checksum)))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    commands = {
        "warm": lambda name, n: by_name[name].warm(n),
        "check": lambda name: by_name[name].check(),
        "memory": lambda name: by_name[name].memory(),
        "timed": lambda name: by_name[name].timed(),
        "probe_round": lambda: probe.round() if probe else None,
        "probe_summary": lambda: probe.summary() if probe else {},
    }
    while True:
        try:
            command, *args = conn.recv()
        except EOFError:
            return
        if command == "stop":
            return
        try:
            conn.send(("ok", commands[command](*args)))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))
