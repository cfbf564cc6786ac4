"""The task heads file (``heads.safetensors``): one ``nn.Linear`` per task, names and classes in its metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import CheckpointError

__all__ = ['HEADS_FILE', 'HEADS_FORMAT', 'save_heads', 'load_heads']

HEADS_FILE = 'heads.safetensors'
HEADS_FORMAT = 'mtdp-heads-v1'


def save_heads(
    path: str | os.PathLike,
    heads: Mapping[str, nn.Linear],
    class_names: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Save task heads as ``<task>.weight`` / ``<task>.bias`` with task names and classes as metadata."""
    tensors, tasks = {}, []
    for name, head in heads.items():
        if not isinstance(head, nn.Linear):
            raise TypeError(f'head {name!r} must be an nn.Linear, got {type(head).__name__}')
        tensors[f'{name}.weight'] = head.weight.detach().cpu().contiguous()
        tensors[f'{name}.bias'] = head.bias.detach().cpu().contiguous()
        classes = list((class_names or {}).get(name, []))
        if classes and len(classes) != head.out_features:
            raise ValueError(f'head {name!r} has {head.out_features} outputs but {len(classes)} class names')
        tasks.append({'name': name, 'num_classes': head.out_features, 'classes': classes})
    save_file(tensors, str(path), metadata={'format': HEADS_FORMAT, 'tasks': json.dumps(tasks)})


def load_heads(path: str | os.PathLike) -> tuple[dict[str, nn.Linear], dict[str, list[str]]]:
    """Read a heads file back: ``{task: nn.Linear}`` and ``{task: class names}``."""
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata() or {}
        if meta.get('format') != HEADS_FORMAT:
            raise CheckpointError(f'{path}: not an mtdp heads file (metadata format={meta.get("format")!r})')
        tasks = json.loads(meta['tasks'])
        heads, classes = {}, {}
        for task in tasks:
            weight, bias = f.get_tensor(f'{task["name"]}.weight'), f.get_tensor(f'{task["name"]}.bias')
            head = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            heads[task['name']] = head
            classes[task['name']] = task['classes']
    return heads, classes
