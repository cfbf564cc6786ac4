"""The one multi-task training step, used by the loop and by every benchmark.

task counts (global under DDP) -> forward (autocast) -> batch-mean cross-entropy over routed heads
-> backward (scaled for fp16), which multiplies head i's gradients by B/|B_i| on the fused head
weights -> optimizer -> LR schedule.

Nothing in it waits for the device (no ``.item()``, no data-dependent shapes: tests/training/test_recipe.py
records every such operation on the CPU, and tests/gpu/test_training_gpu.py runs the step under
``torch.cuda.set_sync_debug_mode('error')`` on CUDA): the loss comes back
as a device tensor, and the loop checks it for non-finite values only when it logs or saves. With
fp16, a fused optimizer (:func:`training.recipe.sgd` on CUDA) takes the gradient scaler's
inf check on the device too; a non-fused one makes the scaler read it back once per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtdp_hub.errors import MtdpError
from mtdp_hub.features.runtime import autocast, grad_scaler, optimizer_step

from .guards import FirstBad
from .model import MultiTaskNet
from .recipe import head_grad_scale, multitask_loss, task_counts

__all__ = ['TrainStep', 'LossWatch', 'NonFiniteLossError']


class NonFiniteLossError(MtdpError, RuntimeError):
    """The loss became NaN/inf; the run stops and its last good checkpoint stays the latest."""


class TrainStep:
    """One optimisation step of ``model`` on a batch ``(x, y, task_index)``.

    Args:
        model: the :class:`MultiTaskNet` whose heads are rescaled.
        optimizer: over its parameters (see :func:`training.recipe.sgd`).
        device, amp_dtype: where and in what autocast dtype (``None``: float32) the step runs;
            a gradient scaler is used for fp16 (:func:`mtdp_hub.features.runtime.grad_scaler`).
        scheduler: stepped after the optimizer, when given.
        world_size, all_reduce: under DDP, the head rescale uses the task counts summed over the
            ranks (``all_reduce`` sums a tensor in place) and the global batch size.
    Attributes:
        forward: what runs the forward pass; the model itself, or its DDP / ``torch.compile``
            wrapper, which the caller assigns.
    """

    def __init__(
        self,
        model: MultiTaskNet,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        world_size: int = 1,
        all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device, self.amp_dtype = device, amp_dtype
        self.scaler = grad_scaler(device, amp_dtype)
        self.world_size, self.all_reduce = world_size, all_reduce
        self.num_tasks = len(model.heads)
        self.forward: nn.Module = model

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch; returns the detached loss and this rank's task counts (device tensors)."""
        counts = task_counts(t, self.num_tasks)
        global_counts = self.all_reduce(counts.clone()) if self.all_reduce is not None else counts
        scale = head_grad_scale(global_counts, x.shape[0] * self.world_size)
        with autocast(self.device, self.amp_dtype):
            logits = self.forward(x, t, scale)
        loss = multitask_loss(logits, y)
        optimizer_step(loss, self.optimizer, self.scaler)
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach(), counts


class LossWatch:
    """Running loss and the first non-finite one, kept on the device: no host sync per step."""

    def __init__(self, num_tasks: int, device: torch.device):
        self.first = FirstBad(
            torch.zeros(num_tasks, dtype=torch.long, device=device)
        )  # its batch's task counts
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0

    def add(self, loss: torch.Tensor, counts: torch.Tensor, iteration: int) -> None:
        self.first.record(~torch.isfinite(loss), counts, iteration)
        self.loss_sum += torch.nan_to_num(loss, nan=0.0, posinf=0.0)
        self.steps += 1

    def check(
        self, any_rank: Callable[[bool], bool], task_names: list[str], iteration: int, checkpoints: list
    ) -> None:
        """Raise :class:`NonFiniteLossError` when any rank saw a non-finite loss (syncs with the device).

        ``any_rank`` ORs a flag over the ranks; ``checkpoints`` are the saved ones, oldest first.
        """
        bad_it = self.first.read()
        if not any_rank(bad_it >= 0):
            return
        present = {task_names[i]: int(c) for i, c in enumerate(self.first.detail.tolist()) if c > 0}
        last = checkpoints
        raise NonFiniteLossError(
            f'non-finite loss at iteration {bad_it if bad_it >= 0 else iteration} '
            f'(tasks in the batch: {present or "n/a (another rank)"}); '
            f'stopping. The last good checkpoint is {last[-1] if last else "none (no checkpoint yet)"}. '
            'Lower optim.lr / head_lr_mult or use run.amp=bf16/none.'
        )

    def take_mean(self) -> float:
        mean = float(self.loss_sum.item()) / max(self.steps, 1)
        self.loss_sum.zero_()
        self.steps = 0
        return mean
