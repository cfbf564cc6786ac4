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
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
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
        **extra,
    }


def restore_run_state(state: dict, step: TrainStep, sampler: TaskUniformSampler) -> int:
    """Put a run back where :func:`run_state` left it; returns the iteration to continue from."""
    step.model.load_state_dict(state['model'])
    step.optimizer.load_state_dict(state['optimizer'])
    step.scheduler.load_state_dict(state['scheduler'])
    step.scaler.load_state_dict(state['scaler'])
    sampler.load_state_dict(state['sampler'])
    set_rng_state(state['rng'])
    return state['iteration']
