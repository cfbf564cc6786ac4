"""The paper's fine-tuning protocol: backbone + fresh linear head, trained on train, best on val.

For each learning rate of the grid the whole network is trained for ``epochs`` epochs; after
every epoch it is scored on val with the task metric. The (learning rate, epoch) with the best
val score is kept (ties: the earlier one) and scored once on test. Without a val split the last
epoch of the first learning rate is used, and the result says so. Training augmentation is the
paper's: random horizontal and vertical flips before the model's own eval preprocessing. On CUDA:
autocast (bf16/fp16 with a grad scaler), channels_last, pinned memory and loader workers.
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
from ..features.runtime import autocast, autocast_dtype, grad_scaler, optimizer_step, pick_device
from ..features.specs import data_config, eval_transform, load_backbone
from ..images import open_rgb
from ..tasks import Split, Task
from .metrics import score

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
    num_workers: int = 4
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
    from torchvision import transforms

    return transforms.Compose([transforms.RandomHorizontalFlip(), transforms.RandomVerticalFlip(), eval_tf])


def _loader(split: Split, transform, cfg: FinetuneConfig, device: torch.device, *, shuffle: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        _ImageDataset(split, transform),
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=cfg.num_workers,
        pin_memory=device.type == 'cuda',
        drop_last=False,
        persistent_workers=cfg.num_workers > 0,
    )


@torch.inference_mode()
def predict(
    model: nn.Module, loader, device: torch.device, amp_dtype, channels_last: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C) float32, labels (N,)) over ``loader``."""
    model.eval()
    outs, ys = [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            outs.append(model(x).float().cpu())
        ys.append(y)
    return torch.cat(outs).numpy(), torch.cat(ys).numpy()


def _score(metric: str, model, loader, device, amp_dtype, channels_last) -> float:
    logits, labels = predict(model, loader, device, amp_dtype, channels_last)
    return score(metric, labels, logits)


def _train_epoch(
    model,
    loader,
    opt,
    scaler,
    loss_fn,
    cfg: FinetuneConfig,
    device: torch.device,
    amp_dtype,
    channels_last: bool,
) -> tuple[float, int]:
    """One epoch (at most ``cfg.max_steps_per_epoch`` steps): mean loss and images seen."""
    model.train()
    losses, seen = [], 0
    for step, (x, y) in enumerate(loader):
        if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            loss = loss_fn(model(x), y)
        optimizer_step(loss, opt, scaler)
        losses.append(float(loss.detach()))
        seen += len(y)
    return (float(np.mean(losses)) if losses else float('nan')), seen


def finetune_lr(
    spec: str,
    task: Task,
    lr: float,
    cfg: FinetuneConfig,
    *,
    seed: int = 0,
    score_test_every_epoch: bool = False,
) -> dict[str, Any]:
    """Train ``spec`` + a fresh head on ``task`` at one learning rate; best epoch on val.

    Returns the val curve, the best epoch (1-based), its val score and its test score.
    ``score_test_every_epoch`` also returns the test curve (for checks; never used to select).
    """
    device = pick_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device)
    channels_last = device.type == 'cuda' if cfg.channels_last is None else cfg.channels_last
    backbone = load_backbone(spec, seed=seed)
    torch.manual_seed(seed)  # head init and data order
    model = BackboneWithHead(backbone, task.n_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dcfg = data_config(backbone, cfg.img_size)
    eval_tf = eval_transform(dcfg)
    train_loader = _loader(
        task.splits['train'], _train_transform(eval_tf), cfg, device, shuffle=True, seed=seed
    )
    val_loader = (
        _loader(task.splits['val'], eval_tf, cfg, device, shuffle=False, seed=seed)
        if task.has('val')
        else None
    )
    test_loader = _loader(task.splits['test'], eval_tf, cfg, device, shuffle=False, seed=seed)

    if cfg.optimizer == 'sgd':
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == 'adam':
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    else:
        raise InvalidOptionError(f"optimizer must be 'sgd' or 'adam', not {cfg.optimizer!r}")
    scaler = grad_scaler(device, amp_dtype)
    loss_fn = nn.CrossEntropyLoss()

    val_curve, test_curve, losses = [], [], []
    best_val, best_epoch, best_state = -np.inf, 0, None
    t0, n_seen = time.perf_counter(), 0
    for epoch in range(1, cfg.epochs + 1):
        epoch_loss, seen = _train_epoch(
            model, train_loader, opt, scaler, loss_fn, cfg, device, amp_dtype, channels_last
        )
        n_seen += seen
        losses.append(epoch_loss)
        if score_test_every_epoch:
            test_curve.append(_score(task.metric, model, test_loader, device, amp_dtype, channels_last))
        if val_loader is None:
            continue
        val = _score(task.metric, model, val_loader, device, amp_dtype, channels_last)
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
    test = _score(task.metric, model, test_loader, device, amp_dtype, channels_last)
    elapsed = time.perf_counter() - t0
    out = {
        'lr': lr,
        'best_epoch': best_epoch,
        'val': None if val_loader is None else float(best_val),
        'val_curve': val_curve,
        'train_loss': losses,
        'score': test,
        'selection': selection,
        'train_img_per_s': round(n_seen / elapsed, 2) if elapsed > 0 else None,
    }
    if score_test_every_epoch:
        out['test_curve'] = test_curve
    return out


def _nan_low(v: float | None) -> float:
    return float('-inf') if v is None or np.isnan(v) else float(v)


def finetune(spec: str, task: Task, cfg: FinetuneConfig, *, seed: int = 0) -> dict[str, Any]:
    """Fine-tune over the LR grid; the LR whose best epoch has the best val score gives the test score."""
    runs = [finetune_lr(spec, task, lr, cfg, seed=seed) for lr in cfg.lrs]
    if task.has('val'):
        # NaN (val score undefined, e.g. AUC with one class in val) ranks lowest; ties -> first LR
        best = max(range(len(runs)), key=lambda i: (_nan_low(runs[i]['val']), -i))
    else:
        best = 0
    chosen = runs[best]
    return {
        'score': chosen['score'],
        'lr': chosen['lr'],
        'epoch': chosen['best_epoch'],
        'val': chosen['val'],
        'selection': chosen['selection'],
        'per_lr': runs,
        'config': {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
