"""A quiet start: the third-party notices every tool printed are filtered, nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

NOTICES = ("is deprecated", "pkg_resources", "No CUDA runtime is found")


def run(code: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # -W default shows every warning once, as a user's shell with PYTHONWARNINGS would.
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_tool_starts_without_third_party_notices_and_other_warnings_still_show():
    # What tools/train_net.py imports and runs before its own output: the package, the training
    # module, detectron2's model zoo (pkg_resources; first imported by a LazyConfig here) and its
    # environment report (cpp_extension's CUDA line), then a warning of our own and a
    # torch.jit.script notice the user causes.
    stderr = run(
        "import runpy, sys, warnings, logging\n"
        "sys.argv = ['train_net.py', '--help']\n"
        "try:\n"
        "    runpy.run_path('tools/train_net.py', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "from resnext_det.lazy import load_lazy_config\n"
        "load_lazy_config('configs/lazy/faster_rcnn_R_50_FPN_1x.py')\n"
        "import detectron2.model_zoo\n"
        "import torch.utils.cpp_extension\n"
        "from resnext_det.env import environment_report\n"
        "environment_report()\n"
        "print('STARTED', file=sys.stderr)\n"
        "warnings.warn('raised on purpose', DeprecationWarning)\n"
        "import torch\n"
        "torch.jit.script(torch.nn.ReLU())\n"
    )
    start, _, after = stderr.partition("STARTED")
    assert after, stderr
    assert not [n for n in NOTICES if n in start], start
    assert "DeprecationWarning: raised on purpose" in after
    assert "`torch.jit.script` is deprecated" in after  # the user's own call still warns
