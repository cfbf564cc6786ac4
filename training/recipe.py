"""The paper's recipe, one function per point (docs/paper.md §2.2-2.5).

- :func:`multitask_loss`: per-sample cross-entropy averaged over the whole batch (Eq. 1).
- :func:`head_grad_scale`: the factors B/|B_i| of head i's gradients, on the device. The training
  step hands them to the forward (:meth:`training.model.MultiTaskNet.head_logits`), whose backward
  applies them to all heads at once (tests/training/test_recipe.py checks it against the rescale
  written out after ``backward()``).
- :func:`param_groups` / :func:`sgd`: backbone at LR gamma, heads at gamma * tau, SGD with momentum.
- :func:`lr_lambdas`: head-only warm-up at its own LR, then constant LRs.
- :func:`recalibrate_batchnorm`: BN statistics from mixed-task batches, output unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .model import MultiTaskNet

__all__ = [
    'multitask_loss',
    'task_counts',
    'head_grad_scale',
    'param_groups',
    'sgd',
    'lr_lambdas',
    'recalibrate_batchnorm',
]


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L = (1/B) sum_i sum_{j in B_i} CE(y_j, yhat_j): per-sample CE, mean over the whole batch."""
    return F.cross_entropy(logits.float(), labels, reduction='none').mean()


def task_counts(task_index: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """|B_i| for each task, on the batch's device.

    A scatter-add into ``num_tasks`` zeros: ``torch.bincount`` would read the largest index back to
    the host to size its output (a device sync per step on CUDA).
    """
    counts = torch.zeros(num_tasks, dtype=torch.long, device=task_index.device)
    return counts.scatter_add_(0, task_index, torch.ones_like(task_index))


def head_grad_scale(counts: torch.Tensor, batch_size: int | torch.Tensor) -> torch.Tensor:
    """B/|B_i| per task as float32 (0 for an absent task, whose head gradient is zero anyway).

    Under DDP pass the counts and batch size summed over the ranks: the scaled gradients, averaged
    over the ranks, are then each head's per-task mean over the global batch.
    """
    counts = counts.to(torch.float32)
    return torch.where(counts > 0, batch_size / counts.clamp(min=1), torch.zeros_like(counts))


def param_groups(model: MultiTaskNet, lr: float, head_lr_mult: float) -> list[dict]:
    """Two optimizer groups: the backbone at ``lr`` (gamma), the heads at ``lr * head_lr_mult`` (gamma * tau)."""
    return [
        {'name': 'backbone', 'params': list(model.backbone.parameters()), 'lr': lr},
        {'name': 'heads', 'params': list(model.heads.parameters()), 'lr': lr * head_lr_mult},
    ]


def sgd(
    model: MultiTaskNet,
    lr: float,
    head_lr_mult: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.SGD:
    """SGD over :func:`param_groups`; ``fused`` (default: on CUDA) runs the update as a few fused kernels."""
    if fused is None:
        fused = next(model.parameters()).device.type == 'cuda'
    return torch.optim.SGD(
        param_groups(model, lr, head_lr_mult),
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        fused=fused or None,
    )


def lr_lambdas(warmup_iterations: int, warmup_lr: float, lr: float, head_lr_mult: float) -> list[Callable]:
    """LambdaLR factors for (backbone, heads): warm-up = backbone 0 and heads at ``warmup_lr``; then 1."""
    head_factor = warmup_lr / (lr * head_lr_mult)

    def backbone(it: int) -> float:
        return 0.0 if it < warmup_iterations else 1.0

    def heads(it: int) -> float:
        return head_factor if it < warmup_iterations else 1.0

    return [backbone, heads]


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BN layers :func:`recalibrate_batchnorm` re-estimates (affine ``BatchNorm2d``)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    all_reduce: Callable[[torch.Tensor], None] | None = None,
) -> int:
    """Re-estimate every affine BN layer's statistics on ``batches`` without changing its output.

    For each BN input, the per-channel mean mu_t and unbiased variance var_t over all batches
    (pooled; summed over ranks with ``all_reduce``) replace the running statistics, and
    gamma_t = gamma_s * sigma_t / sigma_s, beta_t = beta_s + gamma_s * (mu_t - mu_s) / sigma_s
    with sigma = sqrt(var + eps), so the eval-mode output is unchanged while train-mode batch
    normalisation now starts from the ImageNet behaviour (supplementary §B; docs/paper.md §2.5). Returns the batch count.
    """
    layers = bn_layers(model)
    sums = {m: None for m in layers}

    def hook(module, inputs):
        x = inputs[0].detach().to(torch.float64)
        if x.dim() != 4:
            raise ValueError(f'recalibrate_batchnorm expects NCHW inputs, got shape {tuple(x.shape)}')
        n = x.shape[0] * x.shape[2] * x.shape[3]
        s = torch.stack([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))])
        prev = sums[module]
        sums[module] = (s, n) if prev is None else (prev[0] + s, prev[1] + n)

    was_training = model.training
    model.eval()  # eval: the forward itself must not touch the statistics
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    n_batches = 0
    try:
        for x in batches:
            model(x)
            n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for m in layers:
        if sums[m] is None:
            continue
        s, n = sums[m]
        totals = torch.cat([s.flatten(), torch.tensor([float(n)], dtype=torch.float64, device=s.device)])
        if all_reduce is not None:
            all_reduce(totals)
        c = m.num_features
        total_sum, total_sq, count = totals[:c], totals[c : 2 * c], totals[-1]
        mean_t = total_sum / count
        var_t = ((total_sq - total_sum * mean_t) / (count - 1)).clamp(min=0)
        mean_s, var_s = m.running_mean.double(), m.running_var.double()
        sigma_s, sigma_t = (var_s + m.eps).sqrt(), (var_t + m.eps).sqrt()
        gamma_s, beta_s = m.weight.double(), m.bias.double()
        m.weight.copy_((gamma_s * sigma_t / sigma_s).to(m.weight.dtype))
        m.bias.copy_((beta_s + gamma_s * (mean_t - mean_s) / sigma_s).to(m.bias.dtype))
        m.running_mean.copy_(mean_t.to(m.running_mean.dtype))
        m.running_var.copy_(var_t.to(m.running_var.dtype))
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill_(n_batches)
    return n_batches
