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
  is float16 with a ``GradScaler``, as in detectron2. ``cfg.CPU_TRAINING`` (channels_last, bf16
  autocast: :func:`resnext_det.speed.cpu_training_settings`) is applied to the model here, the
  one place, and is what the benchmark's ``cpu_train_defaults`` setting times; its process part
  (threads, freed memory kept) is the command's (:mod:`resnext_det.commands.common`): the
  trainer changes only the objects it builds.
* **Evaluation** is COCO's, with ``use_fast_impl=False`` (detectron2's fast COCOeval is compiled
  C++ that this install may lack); it runs with the training RNG state set aside, so periodic
  evaluation does not change what is trained.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import CheckedDatasetMapper
from ..speed import apply_cpu_training, cpu_training_settings
from ..weights.checkpointer import dataset_classes
from .checkpoint import TrainingCheckpointer
from .hooks import ReplicaCheckHook, TrainingStateHook
from .sampler import build_train_sampler
from .state import preserved_rng
from .step import GuardedTrainer, NonFiniteLossError

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


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
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self._assemble(
            cfg,
            self.build_model(cfg),
            build_optimizer=lambda model: self.build_optimizer(cfg, model),
            build_train_loader=lambda seed: self.build_train_loader(cfg, seed=seed),
            build_lr_scheduler=lambda optimizer: self.build_lr_scheduler(cfg, optimizer),
        )

    def _assemble(
        self,
        cfg: CfgNode,
        model: torch.nn.Module,
        *,
        build_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
        build_train_loader: Callable[[int], Any],
        build_lr_scheduler: Callable[[torch.optim.Optimizer], Any],
        ddp: Mapping[str, Any] | None = None,
    ) -> None:
        """Everything a trainer holds, from ``cfg`` (a yacs config, or the view of a LazyConfig
        that :class:`~resnext_det.lazy.LazyTrainer` builds) and the parts its caller builds:
        the CPU training settings applied to ``model`` before its optimizer, the seeded data
        stream, DDP (gloo without ``device_ids`` on the CPU), the guarded step, the atomic
        checkpointer and the hooks. The one assembly for both config systems."""
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        world = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world:
            raise ValueError(
                f"the batch size (SOLVER.IMS_PER_BATCH, dataloader.train.total_batch_size) must "
                f"be divisible by the number of processes ({world}); got {cfg.SOLVER.IMS_PER_BATCH}"
            )
        # The CPU speed settings (cfg.CPU_TRAINING; None off the CPU), before the optimizer.
        self.cpu_training = cpu_training_settings(cfg)
        apply_cpu_training(model, self.cpu_training)
        optimizer = build_optimizer(model)
        self.sampler_seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        data_loader = build_train_loader(self.sampler_seed)

        ddp = {"broadcast_buffers": False, **(ddp or {})}
        if torch.device(cfg.MODEL.DEVICE).type == "cpu":
            ddp["device_ids"] = None
        model = create_ddp_model(model, **ddp)
        amp = bool(self.cpu_training.amp_dtype) if self.cpu_training else cfg.SOLVER.AMP.ENABLED
        self._trainer = GuardedTrainer(
            model, data_loader, optimizer, amp=amp, device=cfg.MODEL.DEVICE
        )
        self.scheduler = build_lr_scheduler(optimizer)
        self.checkpointer = TrainingCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.checkpointer.classes = dataset_classes(cfg.DATASETS.TRAIN)
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
            "resume (train_net.py --resume)."
        )

    # -- builders ----------------------------------------------------------------------------

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_model(cfg)
        logger.debug(f"Model:\n{model}")  # hundreds of lines: the log file's (and --verbose)
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
