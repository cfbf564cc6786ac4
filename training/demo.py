"""The built-in demo pool: three small synthetic tasks, generated on the fly, deterministic.

- ``demo_tint`` (3 classes): a blobby texture stained haematoxylin-, eosin- or DAB-like;
- ``demo_stripes`` (2 classes): horizontal vs vertical stripes in noise (flips keep orientation);
- ``demo_grating`` (4 classes): sinusoidal gratings of 2, 3, 5 or 8 cycles per image, in random
  orientation.

Images are 72 x 60 px PNGs (not square, so the random square crop has work to do) in the
original layout ``{task}/{train,val}/{class}/*.png``, with a group prefix (``g<k>_``) in the file
names. The pool is learnable by a small CNN from random weights within a few hundred iterations.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

__all__ = ['make_demo_pool', 'DEMO_TASKS']

W, H = 72, 60
DEMO_TASKS = {
    'demo_tint': ['haematoxylin', 'eosin', 'dab'],
    'demo_stripes': ['horizontal', 'vertical'],
    'demo_grating': ['c2', 'c3', 'c5', 'c8'],
}
_COUNTS = {'train': 40, 'val': 16}
_TINTS = np.array([[0.35, 0.30, 0.65], [0.90, 0.45, 0.65], [0.55, 0.35, 0.15]])


def _image(task: str, label: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    noise = rng.normal(0, 0.08, (H, W, 3))
    if task == 'demo_tint':
        blobs = sum(
            np.exp(-((xx - rng.uniform(0, W)) ** 2 + (yy - rng.uniform(0, H)) ** 2) / rng.uniform(20, 80))
            for _ in range(12)
        )
        texture = 0.45 + 0.55 * np.clip(blobs, 0, 1)
        img = texture[..., None] * (_TINTS[label] + rng.normal(0, 0.04, 3)) + noise
    elif task == 'demo_stripes':
        period = rng.uniform(6, 12)
        coord = yy if label == 0 else xx
        wave = 0.5 + 0.25 * np.sign(np.sin(2 * np.pi * coord / period + rng.uniform(0, 6.3)))
        img = wave[..., None] * rng.uniform(0.6, 1.0, 3) + noise
    else:
        cycles = [2, 3, 5, 8][label]
        angle = rng.choice([0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]) + rng.normal(0, 0.1)
        u = (xx * np.cos(angle) + yy * np.sin(angle)) / min(W, H)
        wave = 0.5 + 0.3 * np.sin(2 * np.pi * cycles * u + rng.uniform(0, 6.3))
        img = wave[..., None] * rng.uniform(0.5, 1.0, 3) + noise
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_demo_pool(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the demo pool under ``folder`` (once; a complete pool is reused) and return its pool.yaml."""
    folder = Path(folder)
    pool_file = folder / 'pool.yaml'
    if pool_file.is_file():
        return pool_file
    folder.mkdir(parents=True, exist_ok=True)
    for t, (task, classes) in enumerate(DEMO_TASKS.items()):
        for s, (split, count) in enumerate(_COUNTS.items()):
            for label, cls in enumerate(classes):
                out = folder / task / split / cls
                out.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng([seed, t, s, label])
                for i in range(count):
                    Image.fromarray(_image(task, label, rng)).save(out / f'g{i % 8}_{i:03d}.png')
    spec = {'tasks': [{'root': name, 'groups': 'prefix'} for name in DEMO_TASKS]}
    tmp = folder / '.pool.yaml.tmp'
    tmp.write_text(yaml.safe_dump(spec, sort_keys=False))
    os.replace(tmp, pool_file)  # written last: its presence means the pool is complete
    return pool_file
