"""MultiTaskNet: one shared timm backbone and one linear head per task (paper §III-A; docs/paper.md §2.1).

Routing: each sample's logits come from its own task's head. Every head is evaluated on the
whole batch (a few thousand multiply-adds per sample, next to billions for the backbone, as one
matmul over the concatenated heads) and each sample keeps only its own head's outputs, padded with
``-inf`` to the widest head. This is numerically the same as sending each task's samples to its
head (``-inf`` logits take no probability and get zero gradient), needs no data-dependent shapes
(no host syncs, no ``find_unused_parameters`` under DDP), and a head whose task is absent gets an
exact zero gradient.

The heads stay one ``nn.Linear`` per task (state-dict keys ``heads.<task>.weight`` / ``.bias``, what
checkpoints, exports and :mod:`mtdp_hub.heads` read); only the compute is fused. The recipe's
head-gradient rescale (head i's gradients x B/|B_i|) can ride on the same fused weights: given a
per-task ``head_grad_scale``, the backward multiplies the concatenated weight and bias gradients
row by row (two elementwise kernels, whatever the number of tasks), before they are split back
into the per-task ``.grad`` tensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

import mtdp_hub  # noqa: F401  (registers mtdp_resnet50 / mtdp_densenet121)
from mtdp_hub.errors import CheckpointError, InputNotFoundError, MtdpError
from mtdp_hub.state_dict import is_mtdp_layout, read_state_dict, split_mtdp_checkpoint

from .data import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['MultiTaskNet', 'create_backbone', 'imagenet_weights_name', 'WeightsUnavailableError']


class WeightsUnavailableError(MtdpError, RuntimeError):
    """ImageNet initial weights are neither cached nor reachable."""


class MultiTaskNet(nn.Module):
    """``backbone`` (a timm model with ``num_classes=0``) + ``heads`` (``nn.ModuleDict`` of ``nn.Linear``)."""

    def __init__(self, backbone: nn.Module, tasks: Mapping[str, int]):
        super().__init__()
        self.backbone = backbone
        n = backbone.num_features
        self.heads = nn.ModuleDict({name: nn.Linear(n, c) for name, c in tasks.items()})
        self.task_names = list(tasks)
        self.num_classes = [int(c) for c in tasks.values()]
        # head_columns[t, c]: column of task t's class c in the concatenated logits; padding -> the
        # appended -inf column. Not saved with the state dict (it follows from the tasks).
        total, width = sum(self.num_classes), max(self.num_classes)
        columns = torch.full((len(self.num_classes), width), total, dtype=torch.long)
        offset = 0
        for t, c in enumerate(self.num_classes):
            columns[t, :c] = torch.arange(offset, offset + c)
            offset += c
        self.register_buffer('head_columns', columns, persistent=False)
        # head_rows[r]: the task of row r of the concatenated head weights (for the gradient rescale).
        rows = torch.repeat_interleave(torch.arange(len(self.num_classes)), torch.tensor(self.num_classes))
        self.register_buffer('head_rows', rows, persistent=False)
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """Head-only warm-up: no gradient to the backbone and its BN layers stay in eval mode."""
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def unfreeze_backbone(self) -> None:
        self.backbone_frozen = False
        self.backbone.requires_grad_(True)
        self.backbone.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # keep BN statistics frozen across model.train() calls
        return self

    def head_logits(
        self, features: torch.Tensor, task_index: torch.Tensor, head_grad_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-sample logits from the sample's own head, shape (B, max classes), padded with -inf.

        All heads run as one matmul over their concatenated weights, then one gather picks each
        sample's own columns: a handful of operations whatever the number of tasks (a Linear, a pad
        and a ``where`` per head were ~4x slower, and ~600 small GPU launches per step; BENCHMARKS.md).
        ``head_grad_scale`` (one factor per task, on the device): the backward multiplies head i's
        weight and bias gradients by its factor; the forward is unchanged.
        """
        heads = list(self.heads.values())
        weight = torch.cat([h.weight for h in heads])
        bias = torch.cat([h.bias for h in heads])
        if head_grad_scale is not None:
            rows = head_grad_scale.to(weight.dtype).index_select(0, self.head_rows)
            weight, bias = _ScaleGrad.apply(weight, rows[:, None]), _ScaleGrad.apply(bias, rows)
        logits = F.pad(F.linear(features.float(), weight, bias), (0, 1), value=float('-inf'))
        return logits.gather(1, self.head_columns.index_select(0, task_index))

    def forward(
        self, x: torch.Tensor, task_index: torch.Tensor, head_grad_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head_logits(self.backbone(x), task_index, head_grad_scale)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale`` (broadcast to it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def imagenet_weights_name(arch: str) -> str:
    """torchvision's ImageNet weights in timm (``*.tv_in1k``), which the paper started from."""
    base = {'mtdp_resnet50': 'resnet50', 'mtdp_densenet121': 'densenet121'}.get(arch, arch)
    name = f'{base}.tv_in1k'
    return name if timm.is_model_pretrained(name) or name in timm.list_pretrained(f'{base}.*') else base


def _load_weights_file(path: Path) -> dict:
    """A backbone state dict from a file or exported folder; original mtdp checkpoints are split."""
    state = read_state_dict(path / 'model.safetensors' if path.is_dir() else path)
    return split_mtdp_checkpoint(state)[0] if is_mtdp_layout(state) else state


def create_backbone(
    arch: str,
    init: str = 'imagenet',
    imagenet_weights: str | None = None,
    if_missing: str = 'error',
    log=print,
) -> nn.Module:
    """A timm backbone with ``num_classes=0``, initialised from ImageNet, a local file, or randomly."""
    backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    if init == 'imagenet':
        source = imagenet_weights or imagenet_weights_name(arch)
        try:
            reference = timm.create_model(source, pretrained=True, num_classes=0)
        except Exception as e:  # offline hub, missing cache, HTTP errors: timm raises many types
            message = (
                f'ImageNet weights {source!r} are neither cached nor reachable '
                f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
            )
            if if_missing != 'random':
                raise WeightsUnavailableError(
                    message + '; set model.if_weights_missing=random to start from random '
                    'weights, or model.init=PATH to a local file'
                ) from e
            log(f'WARNING: {message}; starting from RANDOM weights (model.if_weights_missing=random)')
        else:
            backbone.load_state_dict(reference.state_dict(), strict=True)
            log(f'initialised the backbone from {source}')
    elif init != 'random':
        path = Path(os.path.expanduser(init))
        if not path.exists():
            raise InputNotFoundError(f'model.init: no such weights file or folder {path}')
        state = _load_weights_file(path)
        drop = [k for k in state if k.startswith(('fc.', 'classifier.', 'head.fc.', 'heads.'))]
        for k in drop:
            state.pop(k)
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f'model.init {path} does not fit {arch}: missing keys {missing[:8]}'
                f'{"..." if len(missing) > 8 else ""}, unexpected keys {unexpected[:8]}'
            )
        log(f'initialised the backbone from {path}')
    return backbone


def set_training_preprocessing(backbone: nn.Module, size: int) -> None:
    """Record the preprocessing of the training run in the backbone's pretrained_cfg (goes to config.json)."""
    cfg = dict(getattr(backbone, 'pretrained_cfg', None) or {})
    cfg.update(
        tag=None,
        hf_hub_id=None,
        url=None,
        file=None,
        input_size=(3, size, size),
        crop_pct=1.0,
        crop_mode='center',
        interpolation='bilinear',
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=0,
    )
    cfg = {k: v for k, v in cfg.items() if v is not None or k == 'tag'}
    backbone.pretrained_cfg = cfg
