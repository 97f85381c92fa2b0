"""The training step: detectron2's ``SimpleTrainer`` with a cross-rank loss guard and CPU AMP.

A non-finite loss stops every rank at once, before the bad gradients reach the weights, with each
rank's loss terms in the message (detectron2 raises only on rank 0, after ``backward()``, and the
other ranks then wait in the next all-reduce until the 30-minute timeout).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from detectron2.engine import SimpleTrainer, TrainerBase
from detectron2.utils import comm

__all__ = ["GuardedTrainer", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """A loss term was NaN or infinite; raised on every rank before the weights were updated."""


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
