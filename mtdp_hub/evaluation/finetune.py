"""The paper's fine-tuning protocol: backbone + fresh linear head, trained on train, best on val.

For each learning rate of the grid the whole network is trained for ``epochs`` epochs; after
every epoch it is scored on val with the task metric. The (learning rate, epoch) with the best
val score is kept (ties: the earlier one) and scored once on test. Without a val split nothing
can choose among learning rates or epochs: a grid of several learning rates is refused
(:func:`check_plan`, before any training) and a single one is trained for ``epochs`` epochs, its
last epoch scored on test, which the result says (``selection``). Training augmentation is the
paper's: random horizontal and vertical flips before the model's own eval preprocessing.

Data path (:mod:`mtdp_hub.features.pixels`): DataLoader workers decode, flip, resize and crop to
uint8 tensors; the device converts and normalises whole batches (:class:`~mtdp_hub.features.pixels.Normalise`),
the same numbers as timm's float transform to float rounding. Precision: the one policy of
:mod:`mtdp_hub.features.runtime` (``auto``: bf16 autocast on CUDA, fp32 on the CPU; fp16 with a
gradient scaler); channels_last and pinned memory on CUDA.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidOptionError
from ..features.pipeline import loader_settings
from ..features.pixels import Normalise, uint8_eval_transform
from ..features.runtime import (
    autocast,
    autocast_dtype,
    grad_scaler,
    optimizer_step,
    pick_device,
)
from ..features.specs import data_config, eval_transform, load_backbone
from ..images import open_rgb
from ..tasks import Split, Task
from .metrics import classification_details, score

LR_GRID = (1e-3, 1e-4, 1e-5, 1e-6)  # the paper's grid


@dataclass
class FinetuneConfig:
    epochs: int = 100
    lrs: Sequence[float] = LR_GRID
    batch_size: int = 32
    optimizer: str = 'sgd'  # 'sgd' (momentum 0.9) or 'adam'
    momentum: float = 0.9
    weight_decay: float = 0.0
    img_size: int | None = None
    device: str = 'auto'
    precision: str = 'auto'  # autocast: see mtdp_hub.features.runtime (auto = bf16 on CUDA, fp32 on CPU)
    channels_last: bool | None = None
    num_workers: int | None = None  # None: features.runtime.loader_workers (never more than the CPUs)
    max_steps_per_epoch: int | None = None  # for smoke tests


class BackboneWithHead(nn.Module):
    """A timm backbone (``num_classes=0``) followed by a freshly initialised ``nn.Linear``."""

    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(open_rgb(self.split.paths[i])), self.split.labels[i]


def _train_transform(eval_tf):
    """The paper's training augmentation (random h- and v-flip of the PIL image) before ``eval_tf``."""
    from torchvision import transforms

    return transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(), eval_tf])


def pixel_transforms(dcfg: dict[str, Any]) -> tuple[Any, Any, list[float], list[float]]:
    """(train, eval) PIL -> uint8 CHW transforms for the model's data config ``dcfg``, and its mean / std.

    The training one draws the same random flips as ``_train_transform(eval_transform(dcfg))``,
    the float path it replaces; normalising its batches with ``Normalise(mean, std)`` gives the
    same tensors to float rounding.
    """
    pixel_tf, mean, std = uint8_eval_transform(eval_transform(dcfg))
    return _train_transform(pixel_tf), pixel_tf, mean, std


def _loader(split: Split, transform, cfg: FinetuneConfig, device: torch.device, *, shuffle: bool, seed: int):
    settings = loader_settings(device, cfg.num_workers, cfg.batch_size)
    settings['persistent_workers'] = settings['num_workers'] > 0  # the same loader runs every epoch
    return torch.utils.data.DataLoader(
        _ImageDataset(split, transform),
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
        **settings,
    )


@torch.inference_mode()
def predict(model: nn.Module, loader, normalise: Normalise, amp_dtype) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C) float32, labels (N,)) over ``loader``'s uint8 batches, normalised on the device."""
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        with autocast(normalise.device, amp_dtype):
            outs.append(model(normalise(x)).float())
        ys.append(y)
    return torch.cat(outs).cpu().numpy(), torch.cat(ys).numpy()


def _score(metric: str, model, loader, normalise: Normalise, amp_dtype) -> float:
    logits, labels = predict(model, loader, normalise, amp_dtype)
    return score(metric, labels, logits)


def _train_epoch(
    model, loader, opt, scaler, loss_fn, cfg: FinetuneConfig, normalise: Normalise, amp_dtype
) -> tuple[float, int]:
    """One epoch (at most ``cfg.max_steps_per_epoch`` steps): mean loss and images seen.

    The losses stay on the device until the epoch ends (one host sync per epoch, not per step)."""
    model.train()
    losses, seen = [], 0
    for step, (x, y) in enumerate(loader):
        if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
            break
        x, y = normalise(x), y.to(normalise.device, non_blocking=True)
        with autocast(normalise.device, amp_dtype):
            loss = loss_fn(model(x), y)
        optimizer_step(loss, opt, scaler)
        losses.append(loss.detach().float())
        seen += len(y)
    return (float(torch.stack(losses).mean()) if losses else float('nan')), seen


def finetune_lr(
    spec: str,
    task: Task,
    lr: float,
    cfg: FinetuneConfig,
    *,
    seed: int = 0,
    weights: str | None = None,
    score_test_every_epoch: bool = False,
) -> dict[str, Any]:
    """Train ``spec`` (``weights``: a local weight file) + a fresh head on ``task`` at one learning
    rate; the best epoch on val (the last without a val split) is scored on test.

    Returns the val curve, the best epoch (1-based), its val score, its test score and the test
    set's ``details`` (balanced accuracy, per-class metrics, confusion matrix).
    ``score_test_every_epoch`` also returns the test curve (for checks; never used to select).
    """
    device = pick_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device)
    channels_last = device.type == 'cuda' if cfg.channels_last is None else cfg.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    backbone = load_backbone(spec, seed=seed, weights=weights)
    torch.manual_seed(seed)  # head init and data order
    model = BackboneWithHead(backbone, task.n_classes).to(device, memory_format=memory_format)
    train_tf, eval_tf, mean, std = pixel_transforms(data_config(backbone, cfg.img_size))
    normalise = Normalise(mean, std, device, memory_format)
    train_loader = _loader(task.splits['train'], train_tf, cfg, device, shuffle=True, seed=seed)
    val_loader = (
        _loader(task.splits['val'], eval_tf, cfg, device, shuffle=False, seed=seed)
        if task.has('val')
        else None
    )
    test_loader = _loader(task.splits['test'], eval_tf, cfg, device, shuffle=False, seed=seed)
    opt = _optimizer(model, lr, cfg)
    scaler = grad_scaler(device, amp_dtype)
    loss_fn = nn.CrossEntropyLoss()

    val_curve, test_curve, losses = [], [], []
    best_val, best_epoch, best_state = -np.inf, 0, None
    t0, n_seen = time.perf_counter(), 0
    for epoch in range(1, cfg.epochs + 1):
        epoch_loss, seen = _train_epoch(model, train_loader, opt, scaler, loss_fn, cfg, normalise, amp_dtype)
        n_seen += seen
        losses.append(epoch_loss)
        if score_test_every_epoch:
            test_curve.append(_score(task.metric, model, test_loader, normalise, amp_dtype))
        if val_loader is None:
            continue
        val = _score(task.metric, model, val_loader, normalise, amp_dtype)
        val_curve.append(val)
        if val > best_val:  # strict: ties keep the earlier epoch
            best_val, best_epoch = val, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    selection = 'best val epoch'
    if best_state is not None:
        model.load_state_dict(best_state)
    else:  # no val split, or a val score that is never defined (e.g. AUC with one class in val)
        best_epoch, best_val = cfg.epochs, float('nan')
        selection = 'last epoch (no val split)' if val_loader is None else 'last epoch (val score undefined)'
    logits, labels = predict(model, test_loader, normalise, amp_dtype)
    elapsed = time.perf_counter() - t0
    out = {
        'lr': lr,
        'best_epoch': best_epoch,
        'val': None if val_loader is None else float(best_val),
        'val_curve': val_curve,
        'train_loss': losses,
        'score': score(task.metric, labels, logits),
        'details': classification_details(labels, logits, task.class_names),
        'selection': selection,
        'train_img_per_s': round(n_seen / elapsed, 2) if elapsed > 0 else None,
    }
    if score_test_every_epoch:
        out['test_curve'] = test_curve
    return out


def _optimizer(model: nn.Module, lr: float, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == 'sgd':
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == 'adam':
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    raise InvalidOptionError(f"optimizer must be 'sgd' or 'adam', not {cfg.optimizer!r}")


def check_plan(task: Task, cfg: FinetuneConfig) -> None:
    """Refuse, before any training, a plan whose result could not be chosen honestly: several
    learning rates with no val split to choose among them (or a bad optimizer / epoch count)."""
    if cfg.optimizer not in ('sgd', 'adam'):
        raise InvalidOptionError(f"optimizer must be 'sgd' or 'adam', not {cfg.optimizer!r}")
    if cfg.epochs < 1 or not cfg.lrs:
        raise InvalidOptionError(
            f'fine-tuning needs at least one epoch and one learning rate, got {cfg.epochs} / {list(cfg.lrs)}'
        )
    if not task.has('val') and len(cfg.lrs) > 1:
        raise InvalidOptionError(
            f'fine-tuning: task {task.name} has no val split, so nothing can choose among the learning rates '
            f'{", ".join(f"{lr:g}" for lr in cfg.lrs)} (scoring each on test would select on test). Give one '
            'learning rate (--lrs 1e-4: trained for --epochs epochs, the last one scored on test) or add a val split.'
        )


def _nan_low(v: float | None) -> float:
    return float('-inf') if v is None or np.isnan(v) else float(v)


def finetune(
    spec: str, task: Task, cfg: FinetuneConfig, *, seed: int = 0, weights: str | None = None
) -> dict[str, Any]:
    """Fine-tune over the LR grid; the LR whose best epoch has the best val score gives the test score.

    Without a val split the grid must hold one learning rate (:func:`check_plan`): its last epoch is scored.
    """
    check_plan(task, cfg)
    runs = [finetune_lr(spec, task, lr, cfg, seed=seed, weights=weights) for lr in cfg.lrs]
    # NaN (val score undefined, e.g. AUC with one class in val) ranks lowest; ties -> first LR
    best = max(range(len(runs)), key=lambda i: (_nan_low(runs[i]['val']), -i))
    chosen = runs[best]
    return {
        'score': chosen['score'],
        'lr': chosen['lr'],
        'epoch': chosen['best_epoch'],
        'val': chosen['val'],
        'selection': chosen['selection'],
        'details': chosen['details'],
        'per_lr': runs,
        'config': {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
