"""Fixtures for the training tests: tiny folder pools and a tiny, fast config (CPU, 32 px, test_resnet)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import Config, from_dict

REPO_ROOT = Path(__file__).resolve().parents[2]

torch.set_num_threads(1)


def write_task(root: Path, classes: dict[str, dict[str, int]], size=(40, 32), seed=0) -> Path:
    """``classes = {split: {class: count}}``; each class a distinct colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    palette = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (40, 200, 200)]
    for split, counts in classes.items():
        for c, (cls, n) in enumerate(counts.items()):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.clip(np.array(palette[c % 5]) + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255)
                Image.fromarray(a.astype(np.uint8)).save(d / f'p{i % 3}_{i:03d}.png')
    return root


@pytest.fixture
def tiny_pool(tmp_path) -> Path:
    """A pool file with 3 folder tasks of 2, 3 and 2 classes (sizes differ)."""
    base = tmp_path / 'data'
    write_task(base / 'alpha', {'train': {'a': 6, 'b': 6}, 'val': {'a': 3, 'b': 3}}, seed=1)
    write_task(base / 'beta', {'train': {'x': 4, 'y': 4, 'z': 4}, 'val': {'x': 2, 'y': 2, 'z': 2}}, seed=2)
    write_task(base / 'gamma', {'train': {'u': 10, 'v': 10}, 'val': {'u': 2, 'v': 2}}, seed=3)
    pool = tmp_path / 'pool.yaml'
    pool.write_text('tasks:\n  - root: data/alpha\n  - root: data/beta\n  - root: data/gamma\n')
    return pool


def tiny_config_dict(pool: Path, out: Path, **sections) -> dict:
    cfg = {
        'pool': str(pool),
        'data': {'size': 32, 'batch_size': 8, 'eval_batch_size': 16, 'num_workers': 0},
        'model': {'arch': 'test_resnet', 'init': 'random'},
        'optim': {'lr': 0.01, 'head_lr_mult': 2.0},
        'schedule': {
            'iterations': 12,
            'warmup_iterations': 4,
            'warmup_lr': 0.01,
            'bn_recalibration_batches': 2,
            'val_every': 0,
            'checkpoint_every': 4,
            'keep_checkpoints': 2,
            'log_every': 2,
        },
        'run': {
            'output_dir': str(out),
            'name': 'run',
            'device': 'cpu',
            'amp': 'none',
            'channels_last': False,
            'progress': False,
            'tensorboard': False,
            'export': False,
            'threads': 1,
        },
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    return cfg


@pytest.fixture
def tiny_config(tiny_pool, tmp_path):
    """Factory: ``tiny_config(name='x', schedule={...})`` -> a validated Config writing under tmp_path/runs."""

    def make(name='run', **sections) -> Config:
        d = tiny_config_dict(tiny_pool, tmp_path / 'runs', **sections)
        d['run']['name'] = name
        return from_dict(d).validate()

    return make


def run_training_cli(
    args: list[str], env_extra: dict | None = None, timeout=120, **kw
) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO_ROOT), 'HF_HUB_OFFLINE': '1'}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, '-m', 'training', *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )
