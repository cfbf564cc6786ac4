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


def _task_problem(task: object, keys: set[str], f) -> str | None:
    """Why a task entry of the metadata does not match the file's tensors, or ``None``."""
    if not isinstance(task, dict) or not isinstance(task.get('name'), str):
        return 'malformed task entry'
    name = task['name']
    missing = [k for k in (f'{name}.weight', f'{name}.bias') if k not in keys]
    if missing:
        return f'missing tensors {", ".join(missing)}'
    weight, bias = f.get_tensor(f'{name}.weight'), f.get_tensor(f'{name}.bias')
    if weight.ndim != 2 or bias.ndim != 1 or bias.shape[0] != weight.shape[0]:
        return f'weight {tuple(weight.shape)} and bias {tuple(bias.shape)} do not form a linear layer'
    if not (weight.is_floating_point() and bias.is_floating_point()):
        return f'tensors are {weight.dtype} / {bias.dtype}, not floating point'
    if not (bool(torch.isfinite(weight).all()) and bool(torch.isfinite(bias).all())):
        return 'NaN or Inf values'
    if task.get('num_classes', weight.shape[0]) != weight.shape[0]:
        return f'num_classes {task["num_classes"]!r} but {weight.shape[0]} rows'
    classes = task.get('classes') or []
    if not isinstance(classes, list) or (classes and len(classes) != weight.shape[0]):
        return f'{len(classes) if isinstance(classes, list) else "malformed"} class names for {weight.shape[0]} rows'
    return None


def load_heads(path: str | os.PathLike) -> tuple[dict[str, nn.Linear], dict[str, list[str]]]:
    """Read a heads file back: ``{task: nn.Linear}`` and ``{task: class names}``.

    The metadata is checked against the tensors: a listed task without its tensors, shapes that do
    not form a linear layer of ``num_classes`` rows (with as many class names), or non-finite
    values raise :class:`CheckpointError` naming the file and the task.
    """
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata() or {}
        if meta.get('format') != HEADS_FORMAT:
            raise CheckpointError(f'{path}: not an mtdp heads file (metadata format={meta.get("format")!r})')
        try:
            tasks = json.loads(meta.get('tasks', ''))
        except ValueError as e:
            raise CheckpointError(f'{path}: unreadable task list in the metadata: {e}') from e
        if not isinstance(tasks, list):
            raise CheckpointError(f'{path}: the metadata task list is not a list')
        keys = set(f.keys())
        heads, classes = {}, {}
        for task in tasks:
            problem = _task_problem(task, keys, f)
            if problem is not None:
                name = task.get('name') if isinstance(task, dict) else task
                raise CheckpointError(f'{path}: head {name!r}: {problem}')
            weight, bias = f.get_tensor(f'{task["name"]}.weight'), f.get_tensor(f'{task["name"]}.bias')
            head = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            heads[task['name']] = head
            classes[task['name']] = list(task.get('classes') or [])
    return heads, classes
