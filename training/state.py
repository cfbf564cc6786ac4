"""What a checkpoint holds and how a run comes back from it: model, optimizer, schedule, scaler,
sampler position, every RNG, the config, the tasks and the last metrics."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

from .sampler import TaskUniformSampler
from .step import TrainStep

__all__ = [
    'seed_everything',
    'rng_state',
    'set_rng_state',
    'weights_fingerprint',
    'run_state',
    'restore_run_state',
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG's state as plain data and tensors (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': [version, list(internal), gauss],
        'numpy': [
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (to compare ranks and runs exactly)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_state(
    iteration: int, step: TrainStep, sampler: TaskUniformSampler, per_rank_batch: int, **extra
) -> dict:
    """The checkpoint of a run after ``iteration`` steps; ``extra`` adds config, tasks, metrics, ..."""
    sampler.position = iteration * per_rank_batch
    return {
        'iteration': iteration,
        'model': step.model.state_dict(),
        'optimizer': step.optimizer.state_dict(),
        'scheduler': step.scheduler.state_dict(),
        'scaler': step.scaler.state_dict(),
        'sampler': sampler.state_dict(),
        'rng': rng_state(),
        **{k: _plain(v) for k, v in extra.items()},
    }


def _plain(value):
    """Numpy scalars (metrics, ...) as Python numbers, inside dicts and lists too."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def restore_run_state(state: dict, step: TrainStep, sampler: TaskUniformSampler) -> int:
    """Put a run back where :func:`run_state` left it; returns the iteration to continue from."""
    step.model.load_state_dict(state['model'])
    step.optimizer.load_state_dict(state['optimizer'])
    step.scheduler.load_state_dict(state['scheduler'])
    step.scaler.load_state_dict(state['scaler'])
    sampler.load_state_dict(state['sampler'])
    set_rng_state(state['rng'])
    return state['iteration']
