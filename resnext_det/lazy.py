"""detectron2's LazyConfig (Python configs) with the guarantees of ``tools/train_net.py``.

A LazyConfig file is Python: loading it runs it. :func:`load_lazy_config` loads only the file a
user names on the command line (and what that file imports), never one found by searching; the
yaml route of ``LazyConfig.load`` (``yaml.unsafe_load``) is not offered.

What ``resnext-det lazy-train`` (``tools/lazyconfig_train_net.py``, command line in
:mod:`resnext_det.commands.lazy_train`) adds to detectron2's own script of that name:

* the project's :class:`~resnext_det.training.Trainer` machinery through :class:`LazyTrainer`:
  atomic checkpoints with the optimizer, the data stream's seed and position and every rank's
  random state, so ``--resume`` continues exactly (``train.seed >= 0``,
  ``train.deterministic=True``, ``dataloader.train.num_workers=0``,
  ``dataloader.train.aspect_ratio_grouping=False``); the cross-rank non-finite-loss guard; CPU
  DDP (gloo) and CPU AMP;
* the input conventions set from ``train.init_checkpoint`` (:func:`configure_lazy_for_weights`,
  which hands the values to :func:`resnext_det.configure_for_weights`);
* the config written atomically to ``OUTPUT_DIR/config.yaml``; TensorBoard events and
  ``metrics.json`` there (detectron2's ``default_writers``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import TrainerBase, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .io import write_text_atomic
from .speed import (
    INFERENCE_KEYS,
    InferenceChoice,
    InferenceSettings,
    autocast,
    prepare_for_inference,
)
from .training import (
    ReplicaCheckHook,
    ResumableSampler,
    Trainer,
    TrainingCheckpointer,
    TrainingStateHook,
    make_deterministic,
)
from .training.outputs import check_run_folder
from .training.session import hold_output_dir
from .training.state import preserved_rng

__all__ = [
    "LazyTrainer",
    "configure_lazy_for_weights",
    "evaluate_lazy",
    "evaluate_lazy_weights",
    "lazy_training_view",
    "load_lazy_config",
    "setup",
    "train_lazy",
    "use_datasets",
]

logger = logging.getLogger(__name__)

# The yacs keys of the input conventions -> where a LazyConfig keeps them (the test loader's
# image_format is "${...train.mapper.image_format}" in detectron2's common/data).
LAZY_KEYS: dict[str, tuple[str, ...]] = {
    "INPUT.FORMAT": ("model.input_format", "dataloader.train.mapper.image_format"),
    "MODEL.PIXEL_MEAN": ("model.pixel_mean",),
    "MODEL.PIXEL_STD": ("model.pixel_std",),
    "MODEL.RESNETS.STRIDE_IN_1X1": ("model.backbone.bottom_up.spec.stride_in_1x1",),
}
SPEC_KEY = "model.backbone.bottom_up.spec"
# ResNeXtSpec field -> the yacs key ResNeXtSpec.from_config reads it from.
_SPEC_FIELDS = {
    "depth": "DEPTH",
    "cardinality": "NUM_GROUPS",
    "width_per_group": "WIDTH_PER_GROUP",
    "stem_out_channels": "STEM_OUT_CHANNELS",
    "res2_out_channels": "RES2_OUT_CHANNELS",
    "stride_in_1x1": "STRIDE_IN_1X1",
    "norm": "NORM",
    "res5_dilation": "RES5_DILATION",
}


def load_lazy_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """``LazyConfig.load(path)`` + ``key=value`` overrides (hydra's syntax), errors naming the file.

    Runs the Python in ``path``: call it only on a file the user named. ``.yaml`` LazyConfig
    files are refused (detectron2 reads them with ``yaml.unsafe_load``). An override must name
    a key the config has (``train.max_iterr=2`` is refused, naming the nearest keys, as yacs
    refuses an unknown key); ``+key=value`` (hydra's syntax for adding) sets a key the config
    does not have.

    Raises:
        ConfigError: not a ``.py`` file, missing, a folder, a syntax error or any exception
            the file raises while it runs, no ``model``/``train``, a malformed override or one
            that names no key (all naming the file).
    """
    from .config import resolve_config_file

    path = resolve_config_file(path)
    if not path.endswith(".py"):
        raise ConfigError(
            f"LazyConfig file {path}: must be a .py file (a Python config; detectron2 loads .yaml "
            "LazyConfigs with yaml.unsafe_load, which this project does not); for a yacs .yaml "
            "config use resnext-det train"
        )
    if os.path.isdir(path):
        raise ConfigError(f"LazyConfig file {path} is a folder; give the .py file")
    if not os.path.isfile(path):
        raise ConfigError(
            f"LazyConfig file {path} does not exist, nor is it a packaged config name "
            "(resnext_det.model_zoo)"
        )
    try:
        cfg = LazyConfig.load(path)
    except SyntaxError as exc:
        raise ConfigError(f"LazyConfig file {path}: {exc}") from None
    except Exception as exc:  # the file is Python: it can raise anything while it runs
        raise ConfigError(
            f"LazyConfig file {path} raised {type(exc).__name__} while loading: {exc}"
        ) from exc
    missing = [k for k in ("model", "train") if k not in cfg]
    if missing:
        raise ConfigError(
            f"LazyConfig file {path} defines no {' or '.join(missing)}: a training config needs "
            "model, dataloader, optimizer, lr_multiplier and train (detectron2's configs/common)"
        )
    overrides = [str(o) for o in overrides]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"LazyConfig overrides are key=value (hydra's syntax); got {bad}")
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # hydra's grammar errors
        raise ConfigError(f"LazyConfig overrides {overrides} on {path}: {exc}") from None
    for text, o in zip(overrides, parsed):
        if not (o.is_add() or o.is_force_add()):
            _check_override_key(cfg, o.key_or_group, text, path)
    try:
        LazyConfig.apply_overrides(cfg, overrides)
    except Exception as exc:  # hydra's parser and OmegaConf raise many types
        raise ConfigError(f"LazyConfig overrides {overrides} on {path}: {exc}") from None
    return cfg


_ABSENT = object()


# Where a LazyConfig's detector keeps its class count (R-CNN heads; RetinaNet's head). The mask
# and keypoint heads of detectron2's LazyConfigs follow roi_heads.num_classes by interpolation.
_NUM_CLASSES_KEYS = ("model.roi_heads.num_classes", "model.head.num_classes")


def use_datasets(
    cfg: DictConfig, train: str | Sequence[str], test: str | None = None, *, num_classes: int
) -> DictConfig:
    """Point a LazyConfig at your own registered data sets: the training and test data set names
    (the evaluator follows the test set) and the detector's class count; returns ``cfg``.

    Register the sets with ``resnext-det lazy-train --register NAME JSON IMAGE_ROOT`` (or
    :func:`resnext_det.data.register_coco_dataset`). README "Your own data with a LazyConfig"
    shows a whole config file.

    Raises:
        ConfigError: ``num_classes`` below 1, or a config with no class count to set.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"use_datasets: num_classes must be an integer >= 1; got {num_classes!r}")
    keys = [k for k in _NUM_CLASSES_KEYS if _select(cfg, k) is not None]
    if not keys:
        raise ConfigError(
            f"use_datasets: the config has none of {', '.join(_NUM_CLASSES_KEYS)} to set "
            f"num_classes in; set your detector's class count yourself"
        )
    cfg.dataloader.train.dataset.names = train if isinstance(train, str) else list(train)
    if test is not None:
        cfg.dataloader.test.dataset.names = test
    for key in keys:
        OmegaConf.update(cfg, key, num_classes, merge=False)
    return cfg


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every key of a LazyConfig as ``a.b.c`` (into mappings; lists are leaves)."""
    keys = []
    if OmegaConf.is_dict(node):
        for k in node:
            dotted = f"{prefix}{k}"
            keys.append(dotted)
            try:
                child = node._get_node(k)
            except Exception:  # an unresolvable interpolation: still a key, not a mapping
                continue
            keys += _dotted_keys(child, dotted + ".")
    return keys


def _check_override_key(cfg: DictConfig, key: str, text: str, path: str) -> None:
    """Refuse an override whose key the config does not have (a typo would otherwise be saved
    in config.yaml and change nothing), naming the nearest keys."""
    import difflib

    try:
        found = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except Exception:  # e.g. an interpolation that cannot resolve: the key itself exists
        found = None
    if found is not _ABSENT:
        return
    near = difflib.get_close_matches(key, _dotted_keys(cfg), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise ConfigError(
        f"LazyConfig override {text!r}: {path} has no key {key!r}{hint} (to add a new key on "
        f"purpose, write +{text})"
    )


def _select(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted, default=None)


def _yacs_view(cfg: DictConfig) -> CfgNode:
    """The conventions and architecture of a LazyConfig as the yacs keys that hold them."""
    from .config import load_config

    view = load_config()
    spec = instantiate(_select(cfg, SPEC_KEY))  # a ResNeXtSpec: its defaults, d=0 resolved
    for field, key in _SPEC_FIELDS.items():
        view.MODEL.RESNETS[key] = getattr(spec, field)
    for key, (first, *_) in LAZY_KEYS.items():
        value = _select(cfg, first)
        if value is None or key.startswith("MODEL.RESNETS"):
            continue
        *parents, leaf = key.split(".")
        node = view
        for p in parents:
            node = node[p]
        node[leaf] = list(value) if OmegaConf.is_list(value) else value
    return view


def configure_lazy_for_weights(cfg: DictConfig, path: str | None = None) -> dict[str, tuple]:
    """:func:`resnext_det.configure_for_weights` for a LazyConfig (changed in place).

    The LazyConfig's values are handed over as the yacs keys that hold them (``LAZY_KEYS``), and
    what ``configure_for_weights`` changes is written back to every place that keeps it. As with
    a yacs config without an explicit key list, values the config left at detectron2's defaults
    are set from the weights and the others are pinned: a conflict with the weights is an error
    naming the LazyConfig key. Remote weights (``scheme://``) keep the config's conventions.

    Returns:
        ``{lazy_key: (old, new)}`` for every value changed.
    """
    from .weights import configure_for_weights

    path = path if path is not None else _select(cfg, "train.init_checkpoint")
    if not path or "://" in str(path) or _select(cfg, SPEC_KEY) is None:
        return {}
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"train.init_checkpoint {path!r} does not exist (relative paths are from "
            f"{os.getcwd()}); pass train.init_checkpoint=/path/to/file, or "
            "train.init_checkpoint='' to train from scratch"
        )
    view = _yacs_view(cfg)
    try:
        changes = configure_for_weights(view, path)
    except ValueError as exc:
        names = ", ".join(f"{k} is {' and '.join(v)}" for k, v in LAZY_KEYS.items())
        raise ValueError(f"{exc} (in this LazyConfig: {names})") from None
    out = {}
    for key, (old, new) in changes.items():
        for lazy_key in LAZY_KEYS.get(key, ()):
            if _select(cfg, lazy_key.rsplit(".", 1)[0]) is not None:
                OmegaConf.update(cfg, lazy_key, new, merge=False)
                out[lazy_key] = (old, new)
    return out


def _train_value(cfg: DictConfig, key: str, default: Any) -> Any:
    value = _select(cfg, f"train.{key}")
    return default if value is None else value


def lazy_training_view(cfg: DictConfig) -> CfgNode:
    """The yacs keys a :class:`~resnext_det.training.Trainer` reads, from a LazyConfig: device,
    AMP, batch size, schedule length, seed, weights, output folder, ``CPU_TRAINING`` (the
    project's defaults, so that a LazyConfig trains on the CPU as fast as a yacs config; change
    them with ``train.cpu_training.KEY=value``, e.g. ``train.cpu_training.ENABLED=False``) and
    the inference keys of ``MODEL.RESNEXT`` (``INFERENCE_KEYS``; ``--eval-only`` in bf16:
    ``+train.inference.INFERENCE_AMP_DTYPE=bfloat16``)."""
    from .config import load_config

    view = load_config()
    view.MODEL.DEVICE = str(_train_value(cfg, "device", "cuda"))
    view.MODEL.WEIGHTS = str(_train_value(cfg, "init_checkpoint", ""))
    view.SOLVER.AMP.ENABLED = bool(_select(cfg, "train.amp.enabled"))
    view.SOLVER.IMS_PER_BATCH = int(cfg.dataloader.train.total_batch_size)
    view.SOLVER.MAX_ITER = int(cfg.train.max_iter)
    view.SOLVER.CHECKPOINT_PERIOD = int(_select(cfg, "train.checkpointer.period") or 5000)
    view.SEED = int(_train_value(cfg, "seed", -1))
    view.OUTPUT_DIR = str(_train_value(cfg, "output_dir", "./output"))
    view.TEST.EXPECTED_RESULTS = []
    names = _select(cfg, "dataloader.train.dataset.names")  # the class names checkpoints keep
    if names:
        view.DATASETS.TRAIN = [names] if isinstance(names, str) else [str(n) for n in names]
    for key, value in dict(_train_value(cfg, "cpu_training", {})).items():
        if key not in view.CPU_TRAINING:
            raise ConfigError(
                f"train.cpu_training.{key}: no such key; allowed: {sorted(view.CPU_TRAINING)}"
            )
        view.CPU_TRAINING[key] = value
    for key, value in dict(_train_value(cfg, "inference", {})).items():
        if key not in INFERENCE_KEYS:
            raise ConfigError(
                f"train.inference.{key}: no such key; allowed: {list(INFERENCE_KEYS)}"
            )
        view.MODEL.RESNEXT[key] = value
    try:  # a bad value is named by the key the user wrote, not by its yacs twin
        InferenceSettings.from_config(view)
    except ValueError as e:
        raise ConfigError(str(e).replace("MODEL.RESNEXT.", "train.inference.", 1)) from None
    view.freeze()
    return view


class LazyTrainer(Trainer):
    """:class:`~resnext_det.training.Trainer` built from a LazyConfig.

    Model, optimizer, schedule and data come from ``cfg.model``, ``cfg.optimizer``,
    ``cfg.lr_multiplier`` and ``cfg.dataloader`` (instantiated as detectron2's
    ``lazyconfig_train_net.py`` does); checkpointing, resume, the loss guard and the
    training-state hooks, the CPU training defaults (``CPU_TRAINING``) and DDP are assembled by
    the Trainer's own code (``Trainer._assemble``). ``self.cfg`` is the yacs view those shared
    parts read (:func:`lazy_training_view`); the LazyConfig is ``self.lazy_cfg``.

    ``dataloader.train`` must not set a ``sampler``: the trainer positions detectron2's
    ``TrainingSampler`` in the seeded stream (:class:`ResumableSampler`) for an exact resume.
    """

    def __init__(self, cfg: DictConfig):
        TrainerBase.__init__(self)
        self.lazy_cfg = cfg
        if _select(cfg, "dataloader.train.sampler") is not None:
            raise ConfigError(
                "dataloader.train.sampler is set; LazyTrainer makes its own (detectron2's "
                "TrainingSampler, positioned for an exact resume): remove the key"
            )
        view = lazy_training_view(cfg)
        model = instantiate(cfg.model).to(view.MODEL.DEVICE)
        logger.debug(f"Model:\n{model}")  # hundreds of lines: the log file's (and --verbose)

        def build_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
            cfg.optimizer.params.model = model
            return instantiate(cfg.optimizer)

        self._assemble(
            view,
            model,
            build_optimizer=build_optimizer,
            build_train_loader=lambda seed: self.build_train_loader(None, seed=seed),
            build_lr_scheduler=lambda optimizer: LRMultiplier(
                optimizer, instantiate(cfg.lr_multiplier), view.SOLVER.MAX_ITER
            ),
            ddp=dict(_train_value(cfg, "ddp", {})),
        )

    def build_train_loader(self, cfg=None, *, seed: int | None = None, start: int = 0):
        """``dataloader.train`` with a :class:`ResumableSampler` ``start`` images in.

        An instance method (``cfg`` is ignored): the loader comes from ``self.lazy_cfg``.
        """
        spec = self.lazy_cfg.dataloader.train
        dataset = instantiate(spec.dataset)
        if seed is None:
            seed = self.sampler_seed
        sampler = ResumableSampler(TrainingSampler(len(dataset), seed=seed), start=start)
        target = spec._target_
        target = locate(target) if isinstance(target, str) else target
        kwargs = {k: instantiate(spec[k]) for k in spec if k not in ("_target_", "dataset")}
        return target(dataset=dataset, sampler=sampler, **kwargs)

    def build_hooks(self) -> list[hooks.HookBase | None]:
        """The Trainer's hooks in the Trainer's order, with periods from ``cfg.train``."""
        cfg = self.lazy_cfg
        period = int(_select(cfg, "train.checkpointer.period") or 5000)
        batch = int(cfg.dataloader.train.total_batch_size)
        self._state_hook = TrainingStateHook(period, self.sampler_seed, batch)
        ret: list[hooks.HookBase | None] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            self._state_hook,
            ReplicaCheckHook(period),
        ]
        if comm.is_main_process():
            keep = _select(cfg, "train.checkpointer.max_to_keep")
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, period, max_to_keep=keep))

        def test_and_save_results():
            with preserved_rng():
                self._last_eval_results = evaluate_lazy(cfg, self.model)
            return self._last_eval_results

        eval_period = int(_train_value(cfg, "eval_period", 0))
        if "test" in cfg.dataloader and "evaluator" in cfg.dataloader:
            ret.append(hooks.EvalHook(eval_period, test_and_save_results))
        if comm.is_main_process():
            writers = default_writers(self.cfg.OUTPUT_DIR, self.max_iter)
            ret.append(
                hooks.PeriodicWriter(writers, period=int(_train_value(cfg, "log_period", 20)))
            )
        return ret


def evaluate_lazy(cfg: DictConfig, model: torch.nn.Module) -> dict[str, Any]:
    """``dataloader.test`` through ``dataloader.evaluator`` (detectron2's ``do_test``)."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def setup(args: argparse.Namespace) -> DictConfig:
    """The LazyConfig of ``--config-file`` with ``key=value`` overrides; logging, seeding, the
    conventions of ``train.init_checkpoint``, ``config.yaml`` in the output folder."""
    from .data import register_coco_dataset

    cfg = load_lazy_config(args.config_file, args.opts or [])
    for name, json_file, image_root in getattr(args, "register", None) or []:
        register_coco_dataset(name, json_file, image_root)  # in every process
    # its keys checked (train.inference, train.cpu_training) before a write, and where it writes
    view = lazy_training_view(cfg)
    check_run_folder(view, None, training=not getattr(args, "eval_only", False))
    output_dir = str(_train_value(cfg, "output_dir", "./output"))
    resume = bool(getattr(args, "resume", False))
    resuming = resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))
    if not resuming:
        configure_lazy_for_weights(cfg)
    # One live run per output folder, as tools/train_net.py (the lock reads only OUTPUT_DIR).
    hold_output_dir(CfgNode({"OUTPUT_DIR": output_dir}))
    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
    rank = comm.get_rank()
    for name in ("fvcore", "detectron2", "resnext_det"):
        setup_logger(output_dir, distributed_rank=rank, name=name)
    logger.info(f"Command line arguments: {args}")
    if comm.is_main_process():
        path = os.path.join(output_dir, "config.yaml")
        try:
            text = OmegaConf.to_yaml(cfg)
        except Exception as exc:  # objects OmegaConf cannot print (lambdas, classes)
            logger.warning(f"config not saved to {path}: {exc}")
        else:
            write_text_atomic(path, text)
            logger.info(f"Full config saved to {path}")
    seed = int(_train_value(cfg, "seed", -1))
    seed_all_rng(None if seed < 0 else seed + rank)
    if _train_value(cfg, "deterministic", False):
        make_deterministic()
    return cfg


def evaluate_lazy_weights(
    cfg: DictConfig,
    *,
    resume: bool = False,
    allow_partial_weights: bool = False,
    inference: InferenceChoice = None,
) -> dict[str, Any]:
    """``--eval-only`` for a LazyConfig: ``train.init_checkpoint`` (or, with ``resume``, the last
    checkpoint in ``train.output_dir``) loaded, checked to give every parameter, put through
    :func:`~resnext_det.speed.prepare_for_inference` (by default with the settings of
    ``train.inference``: :func:`lazy_training_view`) and evaluated by ``dataloader.evaluator``."""
    inference = InferenceSettings.resolve(inference, lazy_training_view(cfg))
    model = instantiate(cfg.model).to(str(_train_value(cfg, "device", "cuda")))
    checkpointer = TrainingCheckpointer(model, str(cfg.train.output_dir))
    weights = str(_train_value(cfg, "init_checkpoint", ""))
    problems = checkpointer.load_complete(
        weights, resume=resume, allow_partial=allow_partial_weights
    )
    for problem in problems:
        logger.warning("--allow-partial-weights: %s", problem)
    model = prepare_for_inference(model, inference)
    with autocast(str(_train_value(cfg, "device", "cuda")), inference.amp_dtype):
        return evaluate_lazy(cfg, model)


def train_lazy(cfg: DictConfig, *, resume: bool = False) -> Mapping[str, Any] | None:
    """Train with :class:`LazyTrainer`; with ``resume``, from the last whole checkpoint."""
    trainer = LazyTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer.train()
