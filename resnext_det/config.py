"""Config keys that resnext-det adds to detectron2's.

Hyper-parameters of the network itself stay under detectron2's ``MODEL.RESNETS`` (``DEPTH``,
``NUM_GROUPS`` is the cardinality C, ``WIDTH_PER_GROUP`` the bottleneck width d, ...), so a
detectron2 model-zoo ResNeXt config works by changing only ``MODEL.BACKBONE.NAME``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import ConfigError
from .reading import read_text_file

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"
# The image formats detectron2's detection_utils.read_image / convert_PIL_to_numpy produce.
INPUT_FORMATS = ("BGR", "RGB", "L", "YUV-BT.601")


def add_resnext_config(cfg: CN) -> CN:
    """Add ``cfg.MODEL.RESNEXT`` (and the project's dataset keys) to ``cfg`` in place; returns it.

    Safe to call twice. Changes no detectron2 default.
    """
    if "RESNEXT" in cfg.MODEL:
        _add_cpu_training_config(cfg)
        return cfg
    cfg.MODEL.RESNEXT = CN()
    # How a block's C paths are computed; all three give the same outputs from the same weights and
    # load the same checkpoints. "grouped" (the paper's form c: one 3x3 conv with C groups) is the
    # fast one: use it to train and run. "aggregated" (form a: C separate 1x1-3x3-1x1 paths, summed)
    # and "concat" (form b: C paths of 1x1 and 3x3, concatenated before one 1x1) exist to show and
    # test the equivalence, and for studying single paths.
    cfg.MODEL.RESNEXT.BLOCK_FORM = "grouped"
    # Store activations and weights in channels_last (NHWC) memory format. Same numbers, and grouped
    # 3x3 convs run faster in NHWC on recent CPUs and GPUs (see docs/benchmarks.md).
    cfg.MODEL.RESNEXT.CHANNELS_LAST = False
    # At inference (tools/train_net.py --eval-only, resnext_det.speed.apply_inference_config): fold
    # FrozenBN / eval-mode BN into the convolutions, use channels_last, pool RoIs on the
    # channels-last maps, compute the FPN's and RPN head's wide 3x3 convolutions by Winograd (fp32,
    # CPU) and, on one CPU thread, use oneDNN for the 1x1 convolutions, i.e.
    # resnext_det.optimize_for_inference. Same fp32 outputs (within 1e-4 relative), faster; set
    # False only to time or debug the unmodified model.
    cfg.MODEL.RESNEXT.OPTIMIZE_FOR_INFERENCE = True
    # Mixed precision at inference: "" (fp32), "bfloat16" or "float16". Changes results slightly
    # (see docs/benchmarks.md for the measured differences); bfloat16 pays off on CPUs with
    # AVX-512 BF16 / AMX and on Ampere or newer GPUs, float16 on GPUs. Training AMP is detectron2's
    # SOLVER.AMP.ENABLED.
    cfg.MODEL.RESNEXT.INFERENCE_AMP_DTYPE = ""
    # torch.compile the backbone at inference. Compiles once per input shape (minutes on a small
    # CPU; needs a C compiler), so use it for long evaluations with fixed-size inputs.
    cfg.MODEL.RESNEXT.COMPILE = False
    # CPU inference: keep freed memory in the process (resnext_det.speed.keep_freed_memory; as
    # CPU_TRAINING.KEEP_FREED_MEMORY for training). Same outputs, 20-40% less CPU time at
    # detection size; resident memory stays at its peak. glibc only.
    cfg.MODEL.RESNEXT.KEEP_FREED_MEMORY = True

    # Datasets in COCO format registered by name before the model is built, each a list
    # [name, json_file, image_root]; the same as tools/train_net.py --register NAME JSON ROOT.
    cfg.DATASETS.COCO_REGISTER = []

    # Ask torch for deterministic kernels (torch.use_deterministic_algorithms, warn-only; cuDNN
    # deterministic, no benchmarking). With SEED >= 0 and DATALOADER.NUM_WORKERS 0 a run killed
    # and resumed ends with the same weights as an uninterrupted one. Slower on GPUs: use it for
    # debugging and reproducibility checks, not for speed.
    cfg.DETERMINISTIC = False
    _add_cpu_training_config(cfg)
    return cfg


def _add_cpu_training_config(cfg: CN) -> None:
    """``cfg.CPU_TRAINING``: how training runs on the CPU (not what it learns); applied in one
    place, :func:`resnext_det.speed.cpu_training_settings`. The defaults are the fastest settings
    whose training outcome matched fp32 channels-first (docs/benchmarks.md, "CPU training")."""
    if "CPU_TRAINING" in cfg:
        return
    cfg.CPU_TRAINING = CN()
    # Apply the keys below when MODEL.DEVICE is cpu. False: detectron2's defaults (fp32, NCHW,
    # torch's thread count), e.g. to time or debug the unmodified trainer.
    cfg.CPU_TRAINING.ENABLED = True
    # Weights and activations of the whole detector in channels_last (NHWC): same numbers, faster
    # grouped convolutions in oneDNN.
    cfg.CPU_TRAINING.CHANNELS_LAST = True
    # Autocast dtype of the forward pass: "" (fp32) or "bfloat16" (no gradient scaler needed: it
    # has fp32's exponent range). Pays off on CPUs with AVX-512 BF16 or AMX; on others it is
    # emulated and slower, so it is used only where torch reports native bf16 support.
    # SOLVER.AMP.ENABLED True also trains in bfloat16 on the CPU.
    cfg.CPU_TRAINING.AMP_DTYPE = "bfloat16"
    # torch intra-op threads; 0 = torch's default (one per core). 1 when several runs share the
    # machine side by side (each run then owns a core).
    cfg.CPU_TRAINING.NUM_THREADS = 0
    # Keep freed memory in the process (resnext_det.speed.keep_freed_memory) instead of handing
    # it back to the kernel and page-faulting it in again every iteration. Faster (15% at 512x640),
    # the process's resident memory stays at its peak. glibc only; elsewhere nothing changes.
    cfg.CPU_TRAINING.KEEP_FREED_MEMORY = True
    # On one thread (NUM_THREADS 1, runs side by side), run the stride-1 1x1 convolutions in
    # oneDNN, which PyTorch's own rule replaces by a 2x slower kernel there
    # (resnext_det.speed.onednn_1x1_convolutions). Same numbers; nothing changes on more threads.
    cfg.CPU_TRAINING.ONEDNN_1X1 = True


def config_value(cfg: Mapping, key: str) -> Any:
    """The value of the dotted ``key`` (``"MODEL.RESNETS.DEPTH"``) in a config.

    Raises:
        KeyError: a part of ``key`` the config does not have.
    """
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def trusted_config_roots() -> tuple[Path, ...]:
    """Folders whose yaml files may use Python tags: the model zoo inside the installed detectron2.

    detectron2's own ``Base-RetinaNet.yaml`` computes its anchor sizes with
    ``!!python/object/apply:eval``; it ships with detectron2 and is as trusted as its code. Any
    other file with a Python tag needs ``allow_unsafe_yaml=True``.
    """
    import detectron2.model_zoo

    return (Path(detectron2.model_zoo.__file__).resolve().parent / "configs",)


def _is_trusted(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in trusted_config_roots())


def config_root() -> Path:
    """The folder of the packaged config names (:mod:`resnext_det.model_zoo`): the installed
    package data, else the checkout's ``configs/``."""
    here = Path(__file__).resolve().parent
    for root in (here / "configs", here.parent / "configs"):
        if root.is_dir():
            return root
    raise FileNotFoundError(
        f"resnext_det's configs are missing: neither {here / 'configs'} (installed package data) "
        f"nor {here.parent / 'configs'} (a checkout) exists; reinstall resnext-det"
    )


_ANNOUNCED: set[str] = set()


def resolve_config_file(config_file: str | os.PathLike) -> str:
    """``config_file`` if such a file (or folder) exists, else the packaged config of that name
    (:func:`resnext_det.model_zoo.get_config_file`: ``raccoon/faster_rcnn_X_26_scratch_raccoon
    .yaml`` works after ``pip install``, without a clone), said once on the log; else
    ``config_file`` unchanged, for the caller's "does not exist". A real file always wins."""
    text = os.fspath(config_file)
    if os.path.exists(text) or os.path.isabs(text):
        return text
    try:
        root = config_root()
    except FileNotFoundError:
        return text
    if ".." in Path(text).parts or not (root / text).is_file():
        return text
    packaged = str(root / text)
    if text not in _ANNOUNCED:
        _ANNOUNCED.add(text)
        logger.warning(f"config {text}: no such file here; using resnext_det's packaged {packaged}")
    return packaged


def load_yaml_tree(
    config_file: str | os.PathLike,
    *,
    allow_unsafe_yaml: bool = False,
    files: list[Path] | None = None,
) -> dict:
    """A yaml config with its ``_BASE_`` chain merged, as fvcore's ``load_yaml_with_base`` does.

    Unlike detectron2's ``CfgNode.merge_from_file`` (which defaults to ``allow_unsafe=True``),
    a Python tag (``!!python/object/apply:os.system``) is refused unless the file lies under
    :func:`trusted_config_roots` or ``allow_unsafe_yaml`` is given. Raises :class:`ConfigError`
    naming the file for a missing file, bad UTF-8, a yaml syntax error, an unsafe tag, a
    ``_BASE_`` loop, or a file that is not a mapping. ``files``, given a list, receives every file
    read (resolved): the config, then its bases.
    """
    return _load_tree(Path(resolve_config_file(config_file)), allow_unsafe_yaml, (), files)


def config_files(config_file: str | os.PathLike, *, allow_unsafe_yaml: bool = False) -> list[Path]:
    """The files a yaml config is made of (resolved): itself and its ``_BASE_`` chain, which a
    command must not write over. Raises as :func:`load_yaml_tree`."""
    files: list[Path] = []
    load_yaml_tree(config_file, allow_unsafe_yaml=allow_unsafe_yaml, files=files)
    return files


def _load_tree(
    path: Path, allow_unsafe: bool, chain: tuple[Path, ...], files: list[Path] | None = None
) -> dict:
    real = path.resolve()
    if real in chain:
        loop = " -> ".join(str(p) for p in (*chain, real))
        raise ConfigError(f"config file {path}: its {BASE_KEY} chain loops: {loop}")
    if not real.exists():
        where = f" (the {BASE_KEY} of {chain[-1]})" if chain else ""
        also = "" if chain else ", nor is it a packaged config name (resnext_det.model_zoo)"
        raise ConfigError(f"config file {path}{where} does not exist{also}")
    text = read_text_file(path, "config file", error=ConfigError)
    if files is not None:
        files.append(real)
    try:
        tree = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        if not (allow_unsafe or _is_trusted(real)):
            raise ConfigError(
                f"config file {path}, line {exc.problem_mark.line + 1}: {exc.problem}. Python tags "
                "run code "
                "when loaded, and are refused in configs outside detectron2's model zoo; "
                "remove the tag, or opt in with allow_unsafe_yaml=True "
                "(--allow-unsafe-yaml) if you trust this file"
            ) from None
        tree = yaml.unsafe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid yaml: {exc}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"config file {path} holds a {type(tree).__name__}, not a mapping of config keys"
        )
    base = tree.pop(BASE_KEY, None)
    if base is None:
        return tree
    merged: dict = {}
    for name in base if isinstance(base, list) else [base]:
        if not isinstance(name, str):
            raise ConfigError(f"config file {path}: {BASE_KEY} entries are paths; got {name!r}")
        name = os.path.expanduser(name)
        base_path = Path(name) if os.path.isabs(name) else real.parent / name
        _merge_into(_load_tree(base_path, allow_unsafe, (*chain, real), files), merged, path)
    _merge_into(tree, merged, path)
    return merged


def _merge_into(a: Mapping, b: dict, path: Path) -> None:
    """Merge dict ``a`` into ``b`` (values of ``a`` win), as fvcore does for ``_BASE_``."""
    for key, value in a.items():
        if isinstance(value, dict) and key in b:
            if not isinstance(b[key], dict):
                raise ConfigError(f"config file {path}: cannot inherit key {key!r} from base")
            _merge_into(value, b[key], path)
        else:
            b[key] = value


def merge_config_file(
    cfg: CN, config_file: str | os.PathLike, *, allow_unsafe_yaml: bool = False
) -> CN:
    """``cfg.merge_from_file(config_file)`` with :func:`load_yaml_tree`'s safe loading.

    Re-implements the rest of detectron2's ``merge_from_file`` (version upgrade) because that
    method hard-wires its own unsafe-by-default loader.
    """
    from detectron2.config.compat import downgrade_config, guess_version, upgrade_config

    loaded = type(cfg)(load_yaml_tree(config_file, allow_unsafe_yaml=allow_unsafe_yaml))
    version = loaded.get("VERSION", None) or guess_version(loaded, str(config_file))
    try:
        if version == cfg.VERSION:
            cfg.merge_from_other_cfg(loaded)
        elif version < cfg.VERSION:
            old = downgrade_config(cfg, to_version=version)
            old.merge_from_other_cfg(loaded)
            upgraded = upgrade_config(old)
            cfg.clear()
            cfg.update(upgraded)
        else:
            raise ConfigError(f"config file {config_file} is of version {version} > {cfg.VERSION}")
    except (KeyError, AssertionError, ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {config_file}: {exc}") from None
    return cfg


def load_config(
    config_file: str | os.PathLike | None = None,
    opts: Iterable[Any] = (),
    *,
    base: CN | None = None,
    allow_unsafe_yaml: bool = False,
) -> CN:
    """The one way the package and its tools make a config: detectron2's defaults (or a clone of
    ``base``) + ``MODEL.RESNEXT`` + the yaml file (loaded safely) + ``KEY VALUE`` overrides.

    Raises :class:`ConfigError` naming the file or the override for every bad input.
    """
    cfg = add_resnext_config(base.clone() if base is not None else get_cfg())
    if cfg.is_frozen():
        cfg.defrost()
    if config_file is not None:
        merge_config_file(cfg, config_file, allow_unsafe_yaml=allow_unsafe_yaml)
    opts = [str(o) if isinstance(o, os.PathLike) else o for o in opts]
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides come in KEY VALUE pairs; got {len(opts)} items: {opts}"
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError, TypeError) as exc:
        raise ConfigError(f"config overrides {opts}: {exc}") from None
    if cfg.INPUT.FORMAT not in INPUT_FORMATS:
        where = f"config file {config_file}" if config_file is not None else "the config"
        raise ConfigError(
            f"{where}: INPUT.FORMAT must be one of {', '.join(INPUT_FORMATS)} (what detectron2's "
            f"read_image converts to); got {cfg.INPUT.FORMAT!r}"
        )
    return cfg
