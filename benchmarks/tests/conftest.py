"""The project's test fixtures (tests/conftest.py) for the benchmark's tests too: every test
seeded, its torch thread count and detectron2's data set catalog given back afterwards."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from conftest import (  # noqa: E402, F401 - fixtures, registered by being named here
    _isolated_dataset_catalog,
    _isolated_dataset_catalog_per_module,
    _restore_torch_threads,
    _seed,
)
