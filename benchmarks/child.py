"""``python -m benchmarks.child``: a child process of the benchmark, which
:class:`~benchmarks.process.AllocatorProcess` starts with its allocator setting in the
environment. Not imported by the package (so that ``-m`` runs it once)."""

from .process import child_main

if __name__ == "__main__":
    child_main()
