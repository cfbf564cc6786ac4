"""Per-task validation of a multi-task model, and the check that an export reloads with its heads.

Images go through the backbone's own eval preprocessing (:func:`mtdp_hub.features.specs.
eval_transform` of its data config: resize, centre crop, normalisation), the same that
``mtdp extract`` applies to the exported model, split as everywhere else: the DataLoader workers
resize and crop to uint8, the device normalises the batch (:mod:`mtdp_hub.features.pixels`). Metrics: accuracy for every task, ROC AUC for
binary ones (:mod:`mtdp_hub.evaluation.metrics`).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch.utils.data import DataLoader

from mtdp_hub.evaluation.metrics import accuracy, roc_auc
from mtdp_hub.features.pixels import Normalise, uint8_eval_transform
from mtdp_hub.features.runtime import autocast
from mtdp_hub.features.specs import data_config, eval_transform
from mtdp_hub.heads import load_heads

from .config import Config
from .data import SplitDataset
from .distributed import Dist
from .model import MultiTaskNet
from .monitor import Monitor
from .pool import TaskPool

__all__ = ['evaluate', 'validate', 'check_export']


@torch.no_grad()
def evaluate(
    model: MultiTaskNet,
    pool: TaskPool,
    split: str,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> dict[str, float]:
    """Per-task accuracy (every task) and ROC AUC (binary tasks) on ``split``."""
    transform, mean, std = uint8_eval_transform(eval_transform(data_config(model.backbone)))
    normalise = Normalise(mean, std, device, memory_format)
    was_training = model.training
    model.eval()
    metrics = {}
    try:
        for t, task in enumerate(pool.tasks):
            if split not in task.splits:
                continue
            loader = DataLoader(
                SplitDataset(pool, t, split, transform),
                batch_size=batch_size,
                num_workers=num_workers,
                pin_memory=device.type == 'cuda',
            )
            probs, labels = [], []
            for x, y, ti in loader:
                x = normalise(x)
                with autocast(device, amp_dtype):
                    logits = model(x, ti.to(device))[:, : task.num_classes]
                probs.append(logits.float().softmax(1).cpu())
                labels.append(y)
            p, y = torch.cat(probs), torch.cat(labels)
            metrics[f'{split}/{task.name}/acc'] = accuracy(y.numpy(), p.argmax(1).numpy())
            if task.num_classes == 2 and len(set(y.tolist())) == 2:
                metrics[f'{split}/{task.name}/auc'] = roc_auc(y.numpy(), p[:, 1].numpy())
    finally:
        model.train(was_training)
    return metrics


def validate(
    model: MultiTaskNet, pool: TaskPool, cfg: Config, d: Dist, amp_dtype, iteration: int, monitor: Monitor
) -> dict[str, float]:
    """Validate on the main rank, record the metrics, and wait for the other ranks."""
    metrics = {}
    if d.is_main:
        metrics = evaluate(
            model,
            pool,
            cfg.data.val_split,
            cfg.data.eval_batch_size,
            d.device,
            cfg.data.num_workers,
            amp_dtype,
            torch.channels_last if cfg.run.channels_last else torch.contiguous_format,
        )
        monitor.scalars(iteration, metrics)
        if metrics:
            monitor.log(f'iteration {iteration}: ' + ', '.join(f'{k} {v:.3f}' for k, v in metrics.items()))
    d.barrier()
    return metrics if d.is_main else {}


def check_export(export_dir: Path, pool: TaskPool, split: str, log=print) -> dict[str, float]:
    """Reload the export through timm (``local-dir:``) + its heads file and score ``split``."""
    backbone = timm.create_model(f'local-dir:{export_dir}', pretrained=True)
    heads, _ = load_heads(export_dir / 'heads.safetensors')
    model = MultiTaskNet(backbone, {name: h.out_features for name, h in heads.items()})
    model.heads.load_state_dict({f'{n}.{k}': v for n, h in heads.items() for k, v in h.state_dict().items()})
    metrics = evaluate(model, pool, split, 64, torch.device('cpu'))
    for task in pool.tasks:
        acc = metrics.get(f'{split}/{task.name}/acc')
        if acc is not None:
            log(
                f'  reloaded export, {task.name} ({task.num_classes} classes, chance {1 / task.num_classes:.2f}): '
                f'{split} accuracy {acc:.3f}'
            )
    return metrics
