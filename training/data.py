"""Images in, tensors out: the paper's augmentation, the multi-task dataset, the loaders, the scan.

Training transform ([PAPER] §III-F, notes 2.4): random maximal square crop -> resize to
``size`` x ``size`` -> random horizontal and vertical flips -> ImageNet normalisation. Nothing
else. Evaluation: resize the short side to ``size`` -> centre crop -> normalisation.

The random choices of a training image come from the seed its draw carries (see
:mod:`training.sampler`), never from a global RNG, so a batch is the same whatever the number of
workers and after a resume.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .pool import TaskPool

__all__ = ['IMAGENET_MEAN', 'IMAGENET_STD', 'train_transform', 'eval_transform', 'MultiTaskDataset', 'SplitDataset',
           'ScanReport', 'scan_pool', 'apply_bad_image_policy', 'BadImagesError']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (x / 255 - mean) / std as (x - 255 mean) * 1 / (255 std): one float conversion and two in-place
# passes over a contiguous CHW tensor. The slower form (a float copy of the permuted view, then three
# new tensors) took more time than the JPEG decode (BENCHMARKS.md, data pipeline).
_MEAN255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_INV_STD255 = 1 / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)


def _to_normalised_tensor(im: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return x.float().sub_(_MEAN255).mul_(_INV_STD255)


def train_transform(im: Image.Image, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random maximal square crop, resize, random H and V flips, ImageNet normalisation."""
    w, h = im.size
    side = min(w, h)
    x0 = int(torch.randint(0, w - side + 1, (1,), generator=generator))
    y0 = int(torch.randint(0, h - side + 1, (1,), generator=generator))
    im = im.crop((x0, y0, x0 + side, y0 + side))
    if side != size:
        im = im.resize((size, size), Image.BILINEAR)
    flips = torch.rand(2, generator=generator)
    if flips[0] < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if flips[1] < 0.5:
        im = im.transpose(Image.FLIP_TOP_BOTTOM)
    return _to_normalised_tensor(im)


def eval_transform(im: Image.Image, size: int) -> torch.Tensor:
    """Resize the short side to ``size``, centre crop ``size`` x ``size``, ImageNet normalisation."""
    w, h = im.size
    if min(w, h) != size:
        scale = size / min(w, h)
        im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return _to_normalised_tensor(im.crop((left, top, left + size, top + size)))


class MultiTaskDataset(Dataset):
    """All training images of a pool, task after task; items are ``(image, label, task_index)``.

    Indexed by the ``(flat_index, augmentation_seed)`` pairs of
    :class:`~training.sampler.TaskUniformSampler`.
    """

    def __init__(self, pool: TaskPool, splits: Sequence[str], size: int, bad_images: str = 'error'):
        self.pool, self.size, self.bad_images = pool, size, bad_images
        self.index: list[tuple[int, str, int]] = []
        self.task_sizes = []
        for t, task in enumerate(pool.tasks):
            n0 = len(self.index)
            for s in splits:
                if s in task.splits:
                    self.index += [(t, s, i) for i in range(len(task.splits[s]))]
            self.task_sizes.append(len(self.index) - n0)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        from mtdp_hub.images import UnreadableImageError

        flat, seed = key if isinstance(key, tuple) else (key, key)
        t, split, i = self.index[flat]
        task = self.pool.tasks[t]
        generator = torch.Generator().manual_seed(int(seed))
        for attempt in range(len(task.splits[split])):
            j = (i + attempt) % len(task.splits[split])
            try:
                im = task.load(split, j)
            except UnreadableImageError as e:
                if self.bad_images != 'skip':
                    raise
                warnings.warn(f'skipping {e} (bad_images: skip)', stacklevel=1)
                continue
            return train_transform(im, self.size, generator), task.splits[split].labels[j], t
        raise RuntimeError(f'task {task.name!r}: no readable image left in split {split!r}')


class SplitDataset(Dataset):
    """One split of one task with the evaluation transform; items are ``(image, label, task_index)``."""

    def __init__(self, pool: TaskPool, task_index: int, split: str, size: int):
        self.task, self.t, self.split, self.size = pool.tasks[task_index], task_index, split, size

    def __len__(self) -> int:
        return len(self.task.splits[self.split])

    def __getitem__(self, i):
        im = self.task.load(self.split, i)
        return eval_transform(im, self.size), self.task.splits[self.split].labels[i], self.t


# --- scanning a pool for undecodable images ----------------------------------------------------
class BadImagesError(RuntimeError):
    """Undecodable images under ``bad_images: error``; the message lists every file and why."""


class _ScanDataset(Dataset):
    def __init__(self, pool: TaskPool, splits: Sequence[str]):
        self.pool = pool
        self.items = [(t, s, i) for t, task in enumerate(pool.tasks) for s in splits if s in task.splits
                      for i in range(len(task.splits[s]))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        from mtdp_hub.images import UnreadableImageError

        t, s, i = self.items[k]
        try:
            self.pool.tasks[t].load(s, i)
            return t, s, i, ''
        except UnreadableImageError as e:
            return t, s, i, e.reason


@dataclass
class ScanReport:
    checked: int
    bad: list[tuple[str, str, int, str, str]]   # (task, split, index, file, reason)

    def lines(self) -> list[str]:
        return [f'{task} [{split}] {where}: {reason}' for task, split, _, where, reason in self.bad]


def scan_pool(pool: TaskPool, splits: Sequence[str] = ('train', 'val', 'test'), num_workers: int = 0,
              progress: bool = False) -> ScanReport:
    """Decode every image of ``splits`` (in DataLoader workers) and report the ones that fail."""
    ds = _ScanDataset(pool, splits)
    loader = DataLoader(ds, batch_size=32, num_workers=num_workers, collate_fn=lambda b: b)
    bad = []
    batches = loader
    if progress:
        from tqdm import tqdm
        batches = tqdm(loader, desc='scanning images', unit='batch', leave=False)
    for batch in batches:
        for t, s, i, reason in batch:
            if reason:
                task = pool.tasks[t]
                bad.append((task.name, s, i, task.describe(s, i), reason))
    return ScanReport(len(ds), bad)


def apply_bad_image_policy(pool: TaskPool, report: ScanReport, policy: str) -> None:
    """``error``: raise listing every bad file; ``skip``: drop them from the pool."""
    if not report.bad:
        return
    if policy != 'skip':
        listing = '\n  '.join(report.lines())
        raise BadImagesError(f'{len(report.bad)} undecodable image(s) in the pool (data.bad_images: error; '
                             f'set data.bad_images=skip to train without them):\n  {listing}')
    by_split: dict[tuple[str, str], set[int]] = {}
    for task, split, i, _, _ in report.bad:
        by_split.setdefault((task, split), set()).add(i)
    tasks = {t.name: t for t in pool.tasks}
    for (task, split), indices in by_split.items():
        tasks[task].remove(split, indices)
        if len(tasks[task].splits[split]) == 0:
            del tasks[task].splits[split]
