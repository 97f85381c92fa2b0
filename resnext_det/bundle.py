"""Offline wheelhouse for machines with no internet (GPU clusters), and its check.

The wheelhouse holds the project's wheel, the detectron2 wheel built by
``tools/build_detectron2_wheel.py`` (pure Python, so it serves every Python), and every run-time
dependency for the target Python and platform, except torch and torchvision: the target keeps its
own CUDA build of those. Install there with::

    pip install --no-index --find-links WHEELHOUSE resnext-det detectron2

Packages published only as source (fvcore, antlr4-python3-runtime, ...) are pure Python; they are
built into ``py3-none-any`` wheels here so that the target needs no build step either.
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

__all__ = ["build_wheelhouse", "verify_wheelhouse", "target_tags"]

# The target brings its own; everything else must be in the wheelhouse.
EXCLUDED = {"torch", "torchvision", "triton"}
# manylinux_2_17 == manylinux2014: what current GPU machines (glibc >= 2.17) accept.
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def target_tags(python_version: str, platforms: tuple[str, ...]) -> set[Tag]:
    """Wheel tags a CPython ``python_version`` interpreter on ``platforms`` accepts."""
    major, minor = (int(v) for v in python_version.split(".")[:2])
    plats = (
        list(platforms)
        + [f"manylinux_2_{n}_x86_64" for n in range(5, 29) if any("x86_64" in p for p in platforms)]
        + ["linux_x86_64", "manylinux1_x86_64", "manylinux2010_x86_64"]
    )
    tags = set(cpython_tags((major, minor), platforms=plats))
    tags |= set(compatible_tags((major, minor), platforms=plats))
    return tags


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def _project_requirements(root: Path) -> list[str]:
    """Run-time requirements of this project (pyproject.toml) without torch/torchvision."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if canonicalize_name(Requirement(d).name) not in EXCLUDED]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_wheelhouse(
    out: Path,
    *,
    python_version: str = "3.12",
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    root: Path | None = None,
    python: str = sys.executable,
) -> Path:
    """Fill ``out`` with every wheel the target needs (see the module docstring)."""
    root = root or Path(__file__).resolve().parents[1]
    out.mkdir(parents=True, exist_ok=True)
    pip = [python, "-m", "pip", "--disable-pip-version-check"]

    d2 = sorted((root / ".cache" / "wheels").glob("detectron2-*.whl"))
    if not d2:
        _run(
            [
                python,
                str(root / "tools" / "build_detectron2_wheel.py"),
                "--out",
                str(root / ".cache" / "wheels"),
            ]
        )
        d2 = sorted((root / ".cache" / "wheels").glob("detectron2-*.whl"))
    shutil.copy2(d2[-1], out / d2[-1].name)
    _run([*pip, "wheel", "--no-deps", "-q", "-w", str(out), str(root)])

    requirements = _project_requirements(root) + [
        r
        for r in _wheel_metadata(d2[-1]).get_all("Requires-Dist", [])
        if "extra ==" not in r and canonicalize_name(Requirement(r).name) not in EXCLUDED
    ]
    with tempfile.TemporaryDirectory() as tmp:
        # Source-only packages: build them here; the result is pure Python and fits any target.
        _run([*pip, "wheel", "-q", "-w", tmp, "-c", str(root / "constraints.txt"), *requirements])
        for wheel in Path(tmp).glob("*-none-any.whl"):
            if not (out / wheel.name).exists():
                shutil.copy2(wheel, out / wheel.name)
    platform_args = [a for p in platforms for a in ("--platform", p)]
    _run(
        [
            *pip,
            "download",
            "-q",
            "--only-binary=:all:",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            *platform_args,
            "--find-links",
            str(out),
            "-d",
            str(out),
            *requirements,
        ]
    )
    return out


def verify_wheelhouse(
    wheelhouse: Path,
    *,
    python_version: str = "3.12",
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    roots: tuple[str, ...] = ("resnext-det", "detectron2"),
) -> list[str]:
    """Check that every distribution ``roots`` need on the target is in ``wheelhouse``.

    Walks Requires-Dist from the roots, evaluating markers for the target Python on Linux, and
    checks each requirement against a wheel whose tags the target accepts and whose version fits.
    Returns the names found; raises ``RuntimeError`` listing what is missing.
    """
    tags = target_tags(python_version, platforms)
    wheels: dict[str, list[tuple[str, Path]]] = {}
    for wheel in wheelhouse.glob("*.whl"):
        name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
        if wheel_tags & tags:
            wheels.setdefault(canonicalize_name(name), []).append((str(version), wheel))
    env = default_environment()
    env.update(
        python_version=python_version,
        python_full_version=f"{python_version}.0",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    missing: list[str] = []
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in EXCLUDED or name in seen:
            continue
        candidates = [
            (v, w) for v, w in wheels.get(name, []) if req.specifier.contains(v, prereleases=True)
        ]
        if not candidates:
            missing.append(str(req))
            continue
        seen.add(name)
        extras = req.extras or {""}
        for line in _wheel_metadata(max(candidates)[1]).get_all("Requires-Dist", []):
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in extras):
                todo.append(dep)
    if missing:
        raise RuntimeError(
            f"{wheelhouse} lacks wheels for Python {python_version} on {platforms[0]}: "
            + ", ".join(sorted(missing))
        )
    return sorted(seen)
