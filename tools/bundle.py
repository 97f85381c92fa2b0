"""Offline wheelhouse for machines with no internet (GPU clusters): build, check, install.

Build tooling, not run-time code (so it lives in ``tools/``, and ``packaging`` is not a run-time
dependency of the package). The wheelhouse holds the project's wheel, the detectron2 wheel built by
``tools/build_detectron2_wheel.py`` (pure Python, so it serves every Python), and the run-time
dependencies for the target Python and platform, except torch and torchvision: the target keeps
its own CUDA build of those. Two sizes:

* full (``make bundle``): every dependency; on the target
  ``pip install --no-index --find-links WHEELHOUSE resnext-det detectron2``;
* slim (``make gpu-wheels``, ``provided=PROVIDED_ON_GPU_MACHINE``): only what a machine that
  already has a scientific Python stack lacks; :func:`plan_install` then picks, on the target,
  exactly the wheels whose distribution is missing there (or there at a version that does not
  fit), and ``tools/gpu_check.sh`` installs those with ``--no-deps``, so nothing the machine has,
  torch least of all, is replaced behind its back.

Packages published only as source (fvcore, antlr4-python3-runtime, ...) are pure Python; they are
built into ``py3-none-any`` wheels here so that the target needs no build step either.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.tags import Tag, compatible_tags, cpython_tags, sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # a bare target: pip carries its own copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.tags import (  # type: ignore[no-redef]
        Tag,
        compatible_tags,
        cpython_tags,
        sys_tags,
    )
    from pip._vendor.packaging.utils import (  # type: ignore[no-redef]
        canonicalize_name,
        parse_wheel_filename,
    )

__all__ = [
    "DEFAULT_PLATFORMS",
    "PROVIDED_ON_GPU_MACHINE",
    "InstallPlan",
    "build_wheelhouse",
    "plan_install",
    "target_tags",
    "verify_wheelhouse",
]

ROOTS = ("resnext-det", "detectron2")
# The target brings its own; everything else must be in the wheelhouse.
EXCLUDED = frozenset({"torch", "torchvision", "triton"})
# manylinux_2_17 == manylinux2014: what current GPU machines (glibc >= 2.17) accept.
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# What the lent GPU machine has (issue 18: Python 3.12 with torch 2.11 / torchvision 0.26, timm,
# onnx, onnxruntime, safetensors, opencv, matplotlib, pytest, hypothesis), and the big
# requirements of those (numpy, pillow), so that they need not travel. What these need in turn is
# theirs; everything else the project needs travels, even where the machine may have it (pip
# installs only what is missing there).
PROVIDED_ON_GPU_MACHINE = frozenset(
    {
        "timm",
        "onnx",
        "onnxruntime",
        "safetensors",
        "opencv-python",
        "opencv-python-headless",
        "matplotlib",
        "pytest",
        "hypothesis",
        "numpy",
        "pillow",
    }
)
# One requirement that other distributions also satisfy: they all install the module cv2.
ALIASES = {
    "opencv-python-headless": (
        "opencv-python-headless",
        "opencv-python",
        "opencv-contrib-python-headless",
        "opencv-contrib-python",
    )
}


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


def _target_environment(python_version: str) -> dict[str, str]:
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
    return env


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(name).decode())


def _requirements(lines: list[str] | None, env: dict[str, str], extras) -> list[Requirement]:
    """The requirements among Requires-Dist ``lines`` that apply in ``env`` with ``extras``."""
    out = []
    for line in lines or []:
        dep = Requirement(line)
        if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in extras):
            out.append(dep)
    return out


def _wheel_index(wheelhouse: Path, tags: set[Tag]) -> dict[str, list[tuple[object, Path]]]:
    """Name -> [(version, wheel)] of the wheels in ``wheelhouse`` that ``tags`` accept."""
    wheels: dict[str, list[tuple[object, Path]]] = {}
    for wheel in wheelhouse.glob("*.whl"):
        name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
        if wheel_tags & tags:
            wheels.setdefault(canonicalize_name(name), []).append((version, wheel))
    return wheels


def _closure(
    wheels: dict[str, list[tuple[object, Path]]],
    env: dict[str, str],
    roots: tuple[str, ...],
    provided,
) -> tuple[dict[str, Path], list[str]]:
    """Walk Requires-Dist from ``roots`` through ``wheels``, not into the ``provided`` names.

    Returns (name -> the wheel chosen, the requirements no wheel fits).
    """
    chosen: dict[str, Path] = {}
    missing: list[str] = []
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in provided or name in chosen:
            continue
        fits = [(v, w) for v, w in wheels.get(name, []) if req.specifier.contains(v, True)]
        if not fits:
            missing.append(str(req))
            continue
        chosen[name] = max(fits)[1]
        todo += _requirements(
            _wheel_metadata(chosen[name]).get_all("Requires-Dist"), env, req.extras or {""}
        )
    return chosen, missing


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
    provided=frozenset(),
) -> Path:
    """Fill ``out`` with every wheel the target needs (see the module docstring).

    ``provided``: names the target already has; they, and whatever only they need, are left out.
    """
    root = root or Path(__file__).resolve().parents[1]
    out.mkdir(parents=True, exist_ok=True)
    pip = [python, "-m", "pip", "--disable-pip-version-check"]

    d2 = sorted((root / ".cache" / "wheels").glob("detectron2-*.whl"))
    if not d2:
        wheels = str(root / ".cache" / "wheels")
        _run([python, str(root / "tools" / "build_detectron2_wheel.py"), "--out", wheels])
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
            "-c",
            str(root / "constraints.txt"),
            *requirements,
        ]
    )
    # pip's resolver picked one consistent set; keep the part the target lacks.
    tags = target_tags(python_version, platforms)
    chosen, _ = _closure(
        _wheel_index(out, tags), _target_environment(python_version), ROOTS, EXCLUDED | provided
    )
    keep = set(chosen.values())
    for wheel in out.glob("*.whl"):
        if wheel not in keep:
            wheel.unlink()
    return out


def verify_wheelhouse(
    wheelhouse: Path,
    *,
    python_version: str = "3.12",
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    roots: tuple[str, ...] = ROOTS,
    provided=frozenset(),
) -> list[str]:
    """Check that every distribution ``roots`` need on the target is in ``wheelhouse``.

    Walks Requires-Dist from the roots (not into ``provided`` names, nor torch/torchvision),
    evaluating markers for the target Python on Linux, and checks each requirement against a wheel
    whose tags the target accepts and whose version fits. Returns the names found; raises
    ``RuntimeError`` listing what is missing.
    """
    chosen, missing = _closure(
        _wheel_index(wheelhouse, target_tags(python_version, platforms)),
        _target_environment(python_version),
        roots,
        EXCLUDED | frozenset(provided),
    )
    if missing:
        raise RuntimeError(
            f"{wheelhouse} lacks wheels for Python {python_version} on {platforms[0]}: "
            + ", ".join(sorted(missing))
        )
    return sorted(chosen)


# ----------------------------------------------------------------------------- on the target


@dataclass
class InstallPlan:
    """What :func:`plan_install` decided, for this interpreter."""

    install: list[Path] = field(default_factory=list)  # wheels of missing distributions
    replace: dict[str, str] = field(default_factory=dict)  # name -> installed version not fitting
    present: dict[str, str] = field(default_factory=dict)  # name -> installed version kept

    def summary(self) -> str:
        lines = [f"already here ({len(self.present)}): " + " ".join(sorted(self.present))]
        lines.append(
            f"to install ({len(self.install)}): " + " ".join(sorted(w.name for w in self.install))
        )
        if self.replace:
            lines.append(
                "shadowed (installed version does not fit): "
                + ", ".join(f"{k} {v}" for k, v in sorted(self.replace.items()))
            )
        return "\n".join(lines)


def _installed() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def plan_install(
    wheelhouse: Path,
    *,
    roots: tuple[str, ...] = ROOTS,
    installed: dict[str, str] | None = None,
    environment: dict[str, str] | None = None,
) -> InstallPlan:
    """The wheels of ``wheelhouse`` this interpreter needs for ``roots``, and nothing else.

    A requirement an installed distribution satisfies is kept (its own requirements are its
    installer's business); one nothing installed satisfies takes a wheel (whose requirements are
    then walked); torch and torchvision must be the machine's own. Raises ``RuntimeError``
    naming every requirement that neither the machine nor the wheelhouse meets.

    Args:
        installed: name -> version (default: this interpreter's distributions).
        environment: marker environment (default: this interpreter's).
    """
    installed = _installed() if installed is None else installed
    env = default_environment() if environment is None else environment
    wheels = _wheel_index(wheelhouse, set(sys_tags()) if environment is None else _any_tags())
    plan = InstallPlan()
    chosen: dict[str, tuple[object, Requirement]] = {}  # name -> (version, first requirement)
    missing: list[str] = []
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in chosen:
            version, first = chosen[name]
            if not req.specifier.contains(version, True):
                missing.append(f"{req} (conflicts with {first}, which chose {version})")
            continue
        have = [
            (a, installed[a])
            for a in ALIASES.get(name, (name,))
            if a in installed and req.specifier.contains(installed[a], True)
        ]
        if have:
            plan.present[have[0][0]] = have[0][1]
            chosen[name] = (have[0][1], req)
            continue
        fits = [(v, w) for v, w in wheels.get(name, []) if req.specifier.contains(v, True)]
        if name in EXCLUDED or not fits:
            where = "the machine's own" if name in EXCLUDED else f"not in {wheelhouse}"
            found = f"installed: {installed[name]}" if name in installed else "not installed"
            missing.append(f"{req} ({found}; {where})")
            continue
        version, wheel = max(fits)
        if name in installed:
            plan.replace[name] = installed[name]
        plan.install.append(wheel)
        chosen[name] = (version, req)
        todo += _requirements(
            _wheel_metadata(wheel).get_all("Requires-Dist"), env, req.extras or {""}
        )
    if missing:
        raise RuntimeError(
            "cannot install offline; unmet requirements: " + "; ".join(sorted(missing))
        )
    return plan


def _any_tags() -> set[Tag]:
    # Tests pass an explicit environment: accept the tags of any CPython 3.x on Linux x86_64.
    return {t for minor in range(8, 15) for t in target_tags(f"3.{minor}", DEFAULT_PLATFORMS)}
