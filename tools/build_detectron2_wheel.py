#!/usr/bin/env python3
"""Build an installable detectron2 0.6 wheel (Python code only) from the sdist ``pb1-detectron2``.

detectron2 is not on PyPI under its own name. ``pb1-detectron2==0.6`` holds detectron2 0.6's Python
code but not its C++/CUDA sources, so its ``setup.py`` cannot build. This script (standard library
only, so it runs before anything else is installed):

1. fetches the sdist from the package index ($PIP_INDEX_URL, default PyPI) and checks its sha256;
2. writes a small ``setup.py`` of its own: no compiled extension, the model-zoo yaml files
   installed as package data, the run-time requirements without the ``black`` pin;
3. adds a stand-in ``detectron2/_C.py`` whose every op raises a RuntimeError that names the op
   (``detectron2.layers`` imports ``_C`` at import time; axis-aligned Faster R-CNN never calls it);
4. replaces names removed from its dependencies by what they always stood for: NumPy 1.24's
   ``np.bool``/``np.int``/``np.float``/``np.object``/``np.str`` (the builtins; the train loader
   and the VOC loader use them) and Pillow 10's ``Image.LINEAR`` (``Image.BILINEAR``), so that
   current NumPy and Pillow work (old Pillow has no wheels for Python 3.12);
5. builds ``detectron2-0.6+pb1nocsrcN-py3-none-any.whl`` into ``--out``.

The wheel is pure Python, so the same file serves every Python version and platform (the offline
bundle reuses it). A detectron2 built from source with its compiled ops is always preferable on GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
# Bump the local part whenever the patches below change, so that set-up replaces an older build.
WHEEL_VERSION = "0.6+pb1nocsrc4"

# detectron2 0.6's own install_requires, less black (a formatter, not needed at run time), plus the
# upper bound its code needs today (pkg_resources left setuptools in 81).
REQUIREMENTS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "future",
    "pydot",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "setuptools<81",
]

# The ops of detectron2 0.6's csrc/vision.cpp.
COMPILED_OPS = [
    "get_compiler_version",
    "get_cuda_version",
    "has_cuda",
    "box_iou_rotated",
    "nms_rotated",
    "roi_align_rotated_forward",
    "roi_align_rotated_backward",
    "deform_conv_forward",
    "deform_conv_backward_input",
    "deform_conv_backward_filter",
    "modulated_deform_conv_forward",
    "modulated_deform_conv_backward",
    "COCOevalAccumulate",
    "COCOevalEvaluateImages",
    "InstanceAnnotation",
    "ImageEvaluation",
]

STAND_IN_C = '''\
"""Stand-in for detectron2's compiled ops (this detectron2 was built without its C++ sources).

Every op raises a RuntimeError naming itself, both as ``detectron2._C.<op>`` and as
``torch.ops.detectron2.nms_rotated`` (the one op detectron2 0.6 calls through torch.ops).
Axis-aligned Faster R-CNN needs none of them (NMS and ROIAlign come from torchvision). For rotated
boxes, deformable convs or the fast COCO evaluator, build detectron2 from source and re-run
tools/setup_env.sh with --detectron2-src DIR.
"""

import torch

IS_STAND_IN = True
COMPILED_OPS = {ops!r}


def _missing(name):
    return RuntimeError(
        f"detectron2 compiled op '{{name}}' is not available: this detectron2 was installed from "
        "the pb1-detectron2 sdist without its C++/CUDA sources. Build detectron2 from source "
        "(git clone https://github.com/facebookresearch/detectron2) and run "
        "'tools/setup_env.sh --detectron2-src /path/to/detectron2' to get it. For COCO evaluation "
        "use COCOEvaluator(..., use_fast_impl=False)."
    )


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise _missing(name)


def _nms_rotated(boxes, scores, iou_threshold):
    raise _missing("nms_rotated")


try:
    _LIBRARY = torch.library.Library("detectron2", "DEF")
    _LIBRARY.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms_rotated", _nms_rotated, "CompositeExplicitAutograd")
except RuntimeError:  # already defined (e.g. a module reload)
    pass
'''

SETUP_PY = """\
# Written by resnext-det's tools/build_detectron2_wheel.py: detectron2 0.6 without compiled ops.
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version={version!r},
    author="FAIR",
    url="https://github.com/facebookresearch/detectron2",
    description="detectron2 0.6 (Python code of the pb1-detectron2 sdist, no compiled ops)",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
    python_requires=">=3.8",
    install_requires={requirements!r},
)
"""

REMOVED_NAMES = [
    (re.compile(r"\bnp\.(bool|int|float|object|str)\b(?![_0-9])"), r"\1"),
    (re.compile(r"\bImage\.LINEAR\b"), "Image.BILINEAR"),
]


def fetch_sdist(dest: Path, index_url: str) -> Path:
    """Download the sdist from the package index's simple API (PEP 691) into ``dest``.

    ``pip download`` cannot be used: it prepares the sdist's metadata, which imports torch and
    then refuses the sdist's direct-URL extra (panopticapi).
    """
    name = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
    target = dest / name
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    page = f"{index_url.rstrip('/')}/{SDIST_NAME}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
        url = next(f["url"] for f in files if f["filename"] == name)
        partial = target.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        partial.replace(target)
    except (OSError, KeyError, StopIteration, ValueError) as exc:
        raise SystemExit(
            f"could not download {name} from {page} ({exc!r}); fetch it by hand from "
            f"https://pypi.org/project/{SDIST_NAME}/{SDIST_VERSION}/ and pass --sdist PATH"
        ) from exc
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def patch_tree(root: Path) -> int:
    """Apply the changes listed in the module docstring; returns how many aliases were replaced."""
    package = root / "detectron2"
    (package / "_C.py").write_text(STAND_IN_C.format(ops=COMPILED_OPS))
    (root / "setup.py").write_text(
        SETUP_PY.format(version=WHEEL_VERSION, requirements=REQUIREMENTS)
    )
    for stale in ("setup.cfg", "pyproject.toml"):
        (root / stale).unlink(missing_ok=True)
    replaced = 0
    for source in package.rglob("*.py"):
        text = source.read_text()
        for pattern, replacement in REMOVED_NAMES:
            text, count = pattern.subn(replacement, text)
            replaced += count
        source.write_text(text)
    configs = list((package / "model_zoo" / "configs").rglob("*.yaml"))
    if not configs:
        raise SystemExit(
            f"{package / 'model_zoo' / 'configs'} holds no yaml: is this the 0.6 sdist?"
        )
    return replaced


def build(sdist: Path, out: Path, python: str) -> Path:
    digest = sha256(sdist)
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest} is not the expected {SDIST_SHA256}")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        root = Path(tmp) / f"{SDIST_NAME}-{SDIST_VERSION}"
        replaced = patch_tree(root)
        print(f"patched {root.name}: stand-in _C, setup.py, {replaced} removed NumPy/Pillow names")
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(out),
                str(root),
            ],
            check=True,
        )
    wheels = sorted(out.glob(f"detectron2-{WHEEL_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip wheel wrote no detectron2 wheel into {out}")
    return wheels[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/wheels"), help="wheel directory")
    parser.add_argument("--sdist", type=Path, help="a local pb1-detectron2-0.6.tar.gz")
    parser.add_argument("--python", default=sys.executable, help="python whose pip builds it")
    parser.add_argument("--print-version", action="store_true", help="print the wheel's version")
    args = parser.parse_args()
    if args.print_version:
        print(WHEEL_VERSION)
        return
    existing = sorted(args.out.glob(f"detectron2-{WHEEL_VERSION}-*.whl"))
    if existing:
        print(existing[-1])
        return
    index_url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    sdist = args.sdist or fetch_sdist(Path(".cache/sdist"), index_url)
    print(build(sdist, args.out, args.python))


if __name__ == "__main__":
    main()
