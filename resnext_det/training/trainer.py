"""detectron2's ``DefaultTrainer`` with resumable data order, a loss guard and CPU support.

What :class:`Trainer` changes, and why:

* **Checkpoints** are written atomically (:class:`~resnext_det.training.checkpoint.
  TrainingCheckpointer`) and carry the optimizer (detectron2 0.6's ``DefaultTrainer`` saves only
  the iteration and the scheduler, so a resumed run restarts SGD momentum from zero), the
  sampler's seed and position, and every rank's random-number state.
* **Data order is restored on resume**: the sampler continues the seeded stream at the image
  where the checkpoint was taken (:class:`~resnext_det.training.sampler.ResumableSampler`).
  With ``SEED >= 0``, ``DATALOADER.NUM_WORKERS 0``, ``DETERMINISTIC True`` and
  ``DATALOADER.ASPECT_RATIO_GROUPING False`` a killed and resumed run ends with the weights of
  an uninterrupted one (tests/test_resume.py).
* **A non-finite loss** stops every rank at once, before the bad gradients reach the weights,
  with the iteration, each loss term and the last good checkpoint in the message (detectron2
  raises only on rank 0, after ``backward()``, and the other ranks then wait in the next
  all-reduce until the 30-minute timeout).
* **CPU**: DDP without ``device_ids`` (gloo), and ``SOLVER.AMP.ENABLED`` on the CPU runs bfloat16
  autocast without a gradient scaler (detectron2 0.6's ``AMPTrainer`` asserts CUDA); on CUDA it
  is float16 with a ``GradScaler``, as in detectron2.
* **Evaluation** is COCO's, with ``use_fast_impl=False`` (detectron2's fast COCOeval is compiled
  C++ that this install may lack); it runs with the training RNG state set aside, so periodic
  evaluation does not change what is trained.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import (
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import CheckedDatasetMapper
from .checkpoint import TrainingCheckpointer
from .sampler import ResumableSampler

__all__ = [
    "Trainer",
    "GuardedTrainer",
    "NonFiniteLossError",
    "TrainingStateHook",
    "ReplicaCheckHook",
    "capture_rng_state",
    "restore_rng_state",
    "parameter_fingerprint",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or infinite; raised on every rank before the weights were updated."""


# ---------------------------------------------------------------------------------------------
# Random-number state: saved in checkpoints so a resumed run draws what the interrupted one would
# have (augmentations use numpy's and Python's global RNGs, proposal sampling uses torch's).
# Stored as plain lists and tensors so that torch.load(weights_only=True) reads it back.


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, numpy, torch (and CUDA) random states, in a torch.save-safe form."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (evaluation) without changing the random state training continues from."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def parameter_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter's bytes, in name order: equal iff the parameters are bit-equal."""
    model = getattr(model, "module", model)  # DistributedDataParallel: the same names as saved
    h = hashlib.sha1()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The step.


class GuardedTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` step with a cross-rank non-finite check and CPU AMP.

    Args:
        model, data_loader, optimizer: as for ``SimpleTrainer``.
        amp: autocast the forward pass. On CUDA: float16 with a ``GradScaler`` (detectron2's
            ``AMPTrainer``). On CPU: bfloat16, no scaler (bfloat16 has float32's exponent range,
            so gradients do not underflow the way float16's do).
        device: ``MODEL.DEVICE``, to pick the autocast device type.
    """

    def __init__(self, model, data_loader, optimizer, *, amp: bool = False, device: str = "cpu"):
        # SimpleTrainer.__init__ would call iter(data_loader) now, which starts the loader's
        # workers; the loader is replaced on resume (it depends on the start iteration), so the
        # iterator is made on the first step instead (as newer detectron2 does).
        TrainerBase.__init__(self)
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._iter: Iterator | None = None
        self.optimizer = optimizer
        self.device_type = torch.device(device).type
        self.amp = bool(amp)
        self.amp_dtype = torch.float16 if self.device_type == "cuda" else torch.bfloat16
        self.grad_scaler = (
            torch.amp.GradScaler("cuda") if self.amp and self.device_type == "cuda" else None
        )
        if self.amp and self.device_type not in ("cuda", "cpu"):
            raise ValueError(
                f"SOLVER.AMP.ENABLED supports MODEL.DEVICE cuda (float16) and cpu (bfloat16); got "
                f"MODEL.DEVICE {device!r}"
            )

    @property
    def _data_loader_iter(self) -> Iterator:
        if self._iter is None:
            self._iter = iter(self.data_loader)
        return self._iter

    def reset_data_loader(self, data_loader) -> None:
        """Use ``data_loader`` from the next step on (drops the current iterator).

        The new iterator is made now: making one draws a base seed from torch's global RNG,
        which on resume must happen before the checkpoint's random state is restored, not after.
        """
        self.data_loader = data_loader
        self._iter = iter(data_loader)

    def run_step(self) -> None:
        if not self.model.training:
            raise RuntimeError("the model was put in eval mode during training (a hook's doing?)")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        failure = None
        try:
            with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
                loss_dict = self.model(data)
        except FloatingPointError as exc:
            # detectron2's own checks inside the model (the RPN's "Predicted boxes or scores
            # contain Inf/NaN") fire on one rank; turned into a flag so every rank stops together.
            loss_dict, failure = {}, f"{type(exc).__name__}: {exc}"
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        self.check_finite(loss_dict, failure)
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def check_finite(
        self, loss_dict: Mapping[str, torch.Tensor], failure: str | None = None
    ) -> None:
        """Raise :class:`NonFiniteLossError` on every rank if any rank's loss is not finite.

        Args:
            loss_dict: this rank's loss terms.
            failure: the message of an error the forward pass raised on this rank (its losses
                are then unknown).

        One all-reduce of one number per step, so all ranks stop together instead of the
        healthy ones hanging in the next gradient all-reduce.
        """

        def report() -> str | None:
            if failure is not None:
                return failure
            terms = {k: float(v.detach().float()) for k, v in loss_dict.items()}
            if all(np.isfinite(list(terms.values()))):
                return None
            return ", ".join(f"{k}={v:.4g}" for k, v in terms.items())

        mine = report()
        world = comm.get_world_size()
        if world > 1:
            bad = torch.tensor([0.0 if mine is None else 1.0], device=self._device())
            dist.all_reduce(bad)
            if bad.item() == 0:
                return
            reports = comm.all_gather(mine)
            shown = "; ".join(f"rank {r}: {m}" for r, m in enumerate(reports) if m is not None)
        elif mine is None:
            return
        else:
            shown = mine
        raise NonFiniteLossError(
            f"Loss is not finite at iteration {self.iter} ({shown}). The weights were not updated "
            "at this iteration."
        )

    def _device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo CPU ones.
        backend = dist.get_backend() if dist.is_initialized() else "gloo"
        return (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else (torch.device("cpu"))
        )

    def state_dict(self) -> dict[str, Any]:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


# ---------------------------------------------------------------------------------------------
# Hooks.


def _is_checkpoint_iter(iteration: int, period: int, max_iter: int) -> bool:
    # The iterations at which detectron2's PeriodicCheckpointer saves.
    return (iteration + 1) % period == 0 or iteration >= max_iter - 1


class TrainingStateHook(hooks.HookBase):
    """Keeps, for the checkpoint, what a resumed run needs beyond weights and optimizer.

    At every checkpoint iteration (before the checkpointer runs) it gathers every rank's random
    state; its ``state_dict`` (saved inside the trainer's) also holds the sampler seed and the
    number of images drawn. On load it keeps them for :meth:`Trainer.resume_or_load`, and
    restores this rank's random state just before training resumes.
    """

    def __init__(self, checkpoint_period: int, sampler_seed: int, ims_per_batch: int):
        self.checkpoint_period = checkpoint_period
        self.sampler_seed = sampler_seed
        self.ims_per_batch = ims_per_batch
        self._state: dict[str, Any] | None = None
        self.loaded: dict[str, Any] | None = None

    def after_step(self) -> None:
        it = self.trainer.iter
        if _is_checkpoint_iter(it, self.checkpoint_period, self.trainer.max_iter):
            # Loss checks catch most divergence, but a finite loss can still produce an infinite
            # update; never let such weights replace the last good checkpoint. (DDP replicas are
            # equal, so every rank raises.)
            bad = [n for n, p in self.trainer.model.named_parameters() if not p.isfinite().all()]
            if bad:
                raise NonFiniteLossError(
                    f"Parameters are not finite after iteration {it} ({len(bad)} tensors, e.g. "
                    f"{', '.join(bad[:3])}); the checkpoint of this iteration was not written."
                )
            self._state = self._capture(it, comm.all_gather(capture_rng_state()))

    def _capture(self, iteration: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "sampler_seed": self.sampler_seed,
            "images_seen": (iteration + 1) * self.ims_per_batch,
            "world_size": len(rng),
            "rng": rng,
        }

    def state_dict(self) -> dict[str, Any]:
        if self._state is not None and self._state["iteration"] == self.trainer.iter:
            return self._state
        if self.loaded and self.loaded.get("iteration") == self.trainer.iter:
            return self.loaded  # re-saving a loaded checkpoint (see Trainer.train)
        # A save outside the schedule: only this rank's state can be had without a collective.
        if comm.get_world_size() == 1:
            return self._capture(self.trainer.iter, [capture_rng_state()])
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.loaded = dict(state_dict)

    def before_train(self) -> None:
        if not self.loaded or "rng" not in self.loaded:
            return
        rng = self.loaded["rng"]
        if len(rng) != comm.get_world_size():
            logger.warning(
                f"The checkpoint was written by {len(rng)} processes and this run has "
                f"{comm.get_world_size()}: random states are not restored, so augmentations and "
                "proposal sampling will differ from an uninterrupted run."
            )
            return
        restore_rng_state(rng[comm.get_rank()])


class ReplicaCheckHook(hooks.HookBase):
    """At every checkpoint iteration, checks that all ranks hold bit-identical parameters.

    DDP keeps replicas equal only if every rank applies the same update; a rank that diverged
    (a non-deterministic op, a buffer broadcast off, a bug in a custom step) would otherwise go
    unnoticed until the numbers were wrong. Logs the fingerprint on every rank.
    """

    def __init__(self, checkpoint_period: int):
        self.checkpoint_period = checkpoint_period

    def after_step(self) -> None:
        it = self.trainer.iter
        if comm.get_world_size() == 1 or not _is_checkpoint_iter(
            it, self.checkpoint_period, self.trainer.max_iter
        ):
            return
        prints = comm.all_gather(parameter_fingerprint(self.trainer.model))
        logger.info(
            f"Parameter fingerprint after iteration {it}: {prints[comm.get_rank()]} "
            f"(rank {comm.get_rank()} of {len(prints)})"
        )
        if len(set(prints)) != 1:
            raise RuntimeError(
                f"Replicas diverged after iteration {it}: parameter fingerprints by rank "
                f"{dict(enumerate(prints))}"
            )


# ---------------------------------------------------------------------------------------------
# Data.


_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler")


def build_train_sampler(cfg: CfgNode, dataset: list[dict], *, seed: int, start: int = 0):
    """``DATALOADER.SAMPLER_TRAIN`` with an explicit seed, positioned ``start`` images in."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        base = TrainingSampler(len(dataset), seed=seed)
    elif name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        base = RepeatFactorTrainingSampler(factors, seed=seed)
    elif name == "RandomSubsetTrainingSampler":
        base = RandomSubsetTrainingSampler(
            len(dataset), cfg.DATALOADER.RANDOM_SUBSET_RATIO, seed_shuffle=seed, seed_subset=seed
        )
    else:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN must be one of {_SAMPLERS}; got {name!r}")
    return ResumableSampler(base, start=start)


# ---------------------------------------------------------------------------------------------
# The trainer.


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for resnext-det; see the module docstring for what differs.

    Args:
        cfg: a frozen config, from :func:`resnext_det.training.setup`.

    Example::

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=True)   # last whole checkpoint, or MODEL.WEIGHTS
        trainer.train()
    """

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ hard-codes the checkpointer, the step (AMPTrainer asserts
        # CUDA) and DDP's device_ids (wrong on the CPU), so this is its body with those three
        # changed; the order of construction is kept.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        world = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH must be divisible by the number of processes ({world}); "
                f"got {cfg.SOLVER.IMS_PER_BATCH}"
            )

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.sampler_seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        data_loader = self.build_train_loader(cfg, seed=self.sampler_seed)

        on_cpu = torch.device(cfg.MODEL.DEVICE).type == "cpu"
        model = create_ddp_model(
            model, broadcast_buffers=False, **({"device_ids": None} if on_cpu else {})
        )
        self._trainer = GuardedTrainer(
            model, data_loader, optimizer, amp=cfg.SOLVER.AMP.ENABLED, device=cfg.MODEL.DEVICE
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = TrainingCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # -- checkpoint content ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        # detectron2 0.6 saves only the iteration and the hooks' states; the optimizer (SGD
        # momentum) and AMP's grad scaler live in the inner trainer.
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state; SGD momentum starts from zero.")

    def resume_or_load(self, resume: bool = True) -> None:
        """Load the last whole checkpoint (``resume``) or ``MODEL.WEIGHTS``.

        On resume, iteration, optimizer, scheduler, random states and the data stream's seed
        and position all come from the checkpoint, and training continues at the next iteration.
        """
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        self.start_iter = self.iter + 1
        state = self._state_hook.loaded or {}
        if "sampler_seed" in state:
            self.sampler_seed = state["sampler_seed"]
            images_seen = state["images_seen"]
        else:
            images_seen = self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH
            logger.warning(
                "The checkpoint does not record the data order (not written by resnext_det's "
                f"Trainer); the stream of seed {self.sampler_seed} continues at image "
                f"{images_seen}."
            )
        self._state_hook.sampler_seed = self.sampler_seed
        logger.info(
            f"Resuming at iteration {self.start_iter}: data stream of seed {self.sampler_seed} "
            f"from image {images_seen}"
        )
        self._trainer.reset_data_loader(
            self.build_train_loader(self.cfg, seed=self.sampler_seed, start=images_seen)
        )

    def train(self) -> dict[str, Any] | None:
        """Run training from ``start_iter`` to ``SOLVER.MAX_ITER``; returns the last evaluation.

        A run killed while writing ``model_final.pth`` resumes past its last iteration: then
        ``model_final.pth`` is written from the checkpoint just loaded, which holds the same
        state.
        """
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if self.start_iter >= self.max_iter and not os.path.isfile(final):
            logger.info(f"Training had reached iteration {self.iter}; writing {final}")
            if comm.is_main_process():
                self.checkpointer.save("model_final", iteration=self.iter)
        return super().train()

    # -- hooks -------------------------------------------------------------------------------

    def build_hooks(self) -> list[hooks.HookBase | None]:
        """detectron2's default hooks, plus the training-state and replica checks.

        Order matters: the state hook captures random states after the step and before the
        checkpointer saves; evaluation runs after the save (a crash in it leaves the checkpoint)
        and with the random state set aside.
        """
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # save some memory and time for PreciseBN
        period = cfg.SOLVER.CHECKPOINT_PERIOD
        self._state_hook = TrainingStateHook(period, self.sampler_seed, cfg.SOLVER.IMS_PER_BATCH)
        ret: list[hooks.HookBase | None] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PreciseBN(
                cfg.TEST.EVAL_PERIOD,
                self.model,
                self.build_train_loader(cfg, seed=self.sampler_seed),
                cfg.TEST.PRECISE_BN.NUM_ITER,
            )
            if cfg.TEST.PRECISE_BN.ENABLED and hooks.get_bn_modules(self.model)
            else None,
            self._state_hook,
            ReplicaCheckHook(period),
        ]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, period))

        def test_and_save_results():
            with preserved_rng():
                self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        try:
            self._trainer.run_step()
        except NonFiniteLossError as exc:
            raise self._with_checkpoint_note(exc) from None

    def after_step(self) -> None:
        try:
            super().after_step()
        except NonFiniteLossError as exc:
            raise self._with_checkpoint_note(exc) from None

    def _with_checkpoint_note(self, exc: NonFiniteLossError) -> NonFiniteLossError:
        ckpt = self.checkpointer
        if ckpt.has_checkpoint() and ckpt.get_checkpoint_file():
            where = f"The last checkpoint, {ckpt.get_checkpoint_file()}, is intact"
        else:
            where = f"No checkpoint was written to {self.cfg.OUTPUT_DIR} yet"
        return NonFiniteLossError(
            f"{exc} {where}. Lower SOLVER.BASE_LR, raise SOLVER.WARMUP_ITERS, enable "
            "SOLVER.CLIP_GRADIENTS, or check the annotations (empty or inverted boxes); then "
            "resume with --resume."
        )

    # -- builders ----------------------------------------------------------------------------

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_model(cfg)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, *, seed: int | None = None, start: int = 0):
        """detectron2's train loader with the project's mapper and a positioned sampler.

        Args:
            cfg: the config.
            seed: the sampler's seed; default ``cfg.SEED``, or a seed shared by all ranks.
            start: images of the global stream already drawn (``start_iter * IMS_PER_BATCH``).
        """
        if seed is None:
            seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = build_train_sampler(cfg, dataset, seed=seed, start=start)
        mapper = CheckedDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        mapper = CheckedDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        """COCO box (and mask) AP with pycocotools' reference COCOeval (``use_fast_impl=False``)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)
