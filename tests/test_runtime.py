"""resnext_det.runtime: process settings belong to the process's owner, and the library leaves
its caller's process as it found it."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
from conftest import REPO

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _python(code: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", **env},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# A fresh process: the allocator setting is process-wide. Five 64 MiB buffers made, touched and
# freed, page faults counted, before and after keep_freed_memory().
_FAULTS_PER_PASS = """
import json, resource, torch
from resnext_det.runtime import keep_freed_memory

def faults_of_a_pass():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 << 20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

faults_of_a_pass()
before = faults_of_a_pass()
kept = keep_freed_memory()
faults_of_a_pass()
print(json.dumps({"before": before, "after": faults_of_a_pass(), "kept": kept,
                  "again": keep_freed_memory()}))
"""


def test_keep_freed_memory_stops_the_page_faults_of_every_pass():
    """glibc hands freed 64 MiB blocks back to the kernel, so every pass faults them in again
    (16k pages each); kept, a second pass reuses them. Elsewhere it says it did nothing."""
    r = _python(_FAULTS_PER_PASS)
    if not GLIBC:
        assert not r["kept"] and not r["again"]
        return
    assert r["kept"] and r["again"]  # idempotent
    assert r["before"] > 5 * 16_384 // 2, r  # the default: faulted in again (THP may halve it)
    assert r["after"] < r["before"] // 20, r


_ENV_FAULTS = """
import json, resource, torch
def faults_of_a_pass():
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(16 << 20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
faults_of_a_pass()
faults_of_a_pass()
# The fewest of three passes: glibc may still fault a block in once more early on (seen with
# both mallopt and the environment), while the default faults every block in on every pass.
print(json.dumps({"faults": min(faults_of_a_pass() for _ in range(3))}))
"""


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc environment variables")
def test_the_environment_variables_keep_freed_memory_without_code():
    """KEEP_FREED_MEMORY_ENV, given to a process started by someone else (a benchmark's child,
    a job script), has the effect of keep_freed_memory(): no page faults on the second pass."""
    from resnext_det.runtime import KEEP_FREED_MEMORY_ENV

    plain = _python(_ENV_FAULTS)["faults"]
    kept = _python(_ENV_FAULTS, **KEEP_FREED_MEMORY_ENV)["faults"]
    assert plain > 5 * 16_384 // 2, plain
    assert kept < plain // 20, (kept, plain)


# What a user's own script does: import the package, then run the library's inference set-ups,
# a comparison of two detectors, a Predictor and a trainer; before and after, what the process
# looks like. The allocator: 400 MiB the caller allocates and frees must go back to the kernel
# (resident memory falls again), as it does in a process that never imported resnext_det.
_CALLER = r"""
import json, logging, sys, warnings
import torch

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

def state():
    cpp = logging.getLogger("torch.utils.cpp_extension")
    return {
        "warning_filters": [repr(f) for f in warnings.filters],
        "cpp_extension_filters": [type(f).__name__ for f in cpp.filters],
        "threads": torch.get_num_threads(),
    }

def freed_returned():
    before = rss_mib()
    block = torch.ones(100 << 20)  # 400 MiB, touched
    peak = rss_mib()
    del block
    return {"grew": peak - before, "kept": rss_mib() - before}

torch.set_num_threads(2)
first = state()
sys.path.insert(0, "tests")
import resnext_det
from conftest import tiny_cfg
from detectron2.modeling import build_model
from resnext_det.speed import apply_inference_config, optimize_for_inference
after_import = state()

cfg = tiny_cfg()
apply_inference_config(build_model(cfg), cfg)
optimize_for_inference(build_model(cfg))
torch.set_num_threads(1)
optimize_for_inference(build_model(cfg))
torch.set_num_threads(2)

# Two tiny detectors compared on two generated images, and one of them as a Predictor.
import numpy as np, cv2, pathlib, tempfile
from resnext_det.evaluation import compare_models
from resnext_det.predict import Predictor
tmp = pathlib.Path(tempfile.mkdtemp())
images = []
for i in range(2):
    cv2.imwrite(str(tmp / f"{i}.png"), np.full((64, 80, 3), 40 * i, np.uint8))
    images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 80})
gt = {"images": images, "categories": [{"id": 1, "name": "thing"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20],
                       "area": 400, "iscrowd": 0}]}
(tmp / "gt.json").write_text(json.dumps(gt))
models = {}
for name in ("a", "b"):
    c = tiny_cfg()
    c.MODEL.ROI_HEADS.NUM_CLASSES = 1
    torch.save({"model": build_model(c).state_dict()}, tmp / f"{name}.pth")
    (tmp / f"{name}.yaml").write_text(c.dump())
    models[name] = (str(tmp / f"{name}.yaml"), str(tmp / f"{name}.pth"))
compare_models(models, (str(tmp / "gt.json"), str(tmp)), None, bootstrap=0, progress=False)
c.MODEL.WEIGHTS = str(tmp / "b.pth")
Predictor(c)(cv2.imread(str(tmp / "0.png")))
after_calls = state()
print(json.dumps({"first": first, "after_import": after_import, "after_calls": after_calls,
                  "memory": freed_returned()}))
"""


@pytest.mark.slow
def test_the_library_leaves_its_callers_process_alone():
    """Importing resnext_det and calling apply_inference_config, optimize_for_inference (on one
    and two threads), compare_models and a Predictor leave the warning filters, the logging
    filters, the thread count and the allocator as the caller had them."""
    r = _python(_CALLER)
    assert r["after_import"] == r["first"]
    assert r["after_calls"] == r["first"]
    memory = r["memory"]
    assert memory["grew"] > 300, memory  # the 400 MiB were resident...
    assert memory["kept"] < 50, memory  # ...and went back to the kernel when freed


def test_configure_process_sets_what_it_is_asked_and_reports_it():
    r = _python(
        "import json, warnings, torch\n"
        "from resnext_det.runtime import configure_process\n"
        "n = len(warnings.filters)\n"
        "got = configure_process(num_threads=1, keep_freed_memory=True, quiet=True)\n"
        "print(json.dumps({**got, 'threads': torch.get_num_threads(),"
        " 'filters_added': len(warnings.filters) - n}))"
    )
    assert r["num_threads"] == r["threads"] == 1
    assert r["keep_freed_memory"] == GLIBC
    assert r["filters_added"] >= 1
    from resnext_det.runtime import configure_process

    with pytest.raises(ValueError, match=r"num_threads must be an integer >= 0.*-1"):
        configure_process(num_threads=-1)
