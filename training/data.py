"""Images in, tensors out: the paper's augmentation, the multi-task dataset, the loaders, the scan.

Training transform (the paper, §III-F): random maximal square crop -> resize to ``size`` x
``size`` -> random horizontal and vertical flips -> ImageNet normalisation. Nothing else.
Validation uses the backbone's own eval preprocessing (:mod:`training.validation`).

DataLoader workers decode and augment to uint8 CHW (:func:`train_transform_uint8`); the loop
converts and normalises a whole batch on the device with
:class:`mtdp_hub.features.pixels.Normalise` (:func:`train_transform` is the same thing per
image, in float, the reference the tests compare with).

The random choices of a training image come from the seed its draw carries (see
:mod:`training.sampler`), never from a global RNG, so a batch is the same whatever the number of
workers and after a resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mtdp_hub.errors import MtdpError, UnreadableImageError
from mtdp_hub.features.pixels import normalise_uint8, to_uint8

from .pool import TaskPool

__all__ = [
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'augment_params',
    'train_transform',
    'train_transform_uint8',
    'MultiTaskDataset',
    'SplitDataset',
    'ScanReport',
    'scan_pool',
    'apply_bad_image_policy',
    'BadImagesError',
]

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's; the paper's normalisation


def augment_params(width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, bool, bool]:
    """The random choices of one training image: maximal square crop (x0, y0, side), H and V flips."""
    side = min(width, height)
    x0 = int(torch.randint(0, width - side + 1, (1,), generator=generator))
    y0 = int(torch.randint(0, height - side + 1, (1,), generator=generator))
    flips = torch.rand(2, generator=generator)
    return x0, y0, side, bool(flips[0] < 0.5), bool(flips[1] < 0.5)


def _augment_pil(im: Image.Image, size: int, params: tuple[int, int, int, bool, bool]) -> Image.Image:
    x0, y0, side, flip_h, flip_v = params
    im = im.crop((x0, y0, x0 + side, y0 + side))
    if side != size:
        im = im.resize((size, size), Image.BILINEAR)
    if flip_h:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if flip_v:
        im = im.transpose(Image.FLIP_TOP_BOTTOM)
    return im


def train_transform_uint8(im: Image.Image, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random maximal square crop, resize, random H and V flips; uint8 CHW (normalisation left to the batch)."""
    return to_uint8(_augment_pil(im, size, augment_params(*im.size, generator)))


def train_transform(im: Image.Image, size: int, generator: torch.Generator) -> torch.Tensor:
    """:func:`train_transform_uint8` then ImageNet normalisation, per image in float32: the reference
    for what the loop computes on the device."""
    return normalise_uint8(train_transform_uint8(im, size, generator), IMAGENET_MEAN, IMAGENET_STD)


class MultiTaskDataset(Dataset):
    """All training images of a pool, task after task; items are ``(uint8 CHW image, label, task_index)``.

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

    def describe(self, flat: int) -> str:
        """The image of draw ``flat`` for a message: ``task [split] file``."""
        t, split, i = self.index[flat]
        task = self.pool.tasks[t]
        return f'{task.name} [{split}] {task.describe(split, i)}'

    def __getitem__(self, key):
        flat, seed = key if isinstance(key, tuple) else (key, key)
        t, split, i = self.index[flat]
        task = self.pool.tasks[t]
        generator = torch.Generator().manual_seed(int(seed))
        for attempt in range(len(task.splits[split])):
            j = (i + attempt) % len(task.splits[split])
            try:
                image = train_transform_uint8(task.load(split, j), self.size, generator)
            except UnreadableImageError as e:
                if self.bad_images != 'skip':
                    raise
                warnings.warn(f'skipping {e} (bad_images: skip)', stacklevel=1)
                continue
            return image, task.splits[split].labels[j], t
        raise RuntimeError(f'task {task.name!r}: no readable image left in split {split!r}')


class SplitDataset(Dataset):
    """One split of one task through ``transform`` (PIL -> tensor); items are ``(image, label, task_index)``."""

    def __init__(self, pool: TaskPool, task_index: int, split: str, transform):
        self.task, self.t, self.split, self.transform = pool.tasks[task_index], task_index, split, transform

    def __len__(self) -> int:
        return len(self.task.splits[self.split])

    def __getitem__(self, i):
        im = self.task.load(self.split, i)
        return self.transform(im), self.task.splits[self.split].labels[i], self.t


# --- scanning a pool for undecodable images ----------------------------------------------------
class BadImagesError(MtdpError, RuntimeError):
    """Undecodable images under ``bad_images: error``; the message lists every file and why."""


class _ScanDataset(Dataset):
    def __init__(self, pool: TaskPool, splits: Sequence[str]):
        self.pool = pool
        self.items = [
            (t, s, i)
            for t, task in enumerate(pool.tasks)
            for s in splits
            if s in task.splits
            for i in range(len(task.splits[s]))
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        t, s, i = self.items[k]
        try:
            self.pool.tasks[t].load(s, i)
            return t, s, i, ''
        except UnreadableImageError as e:
            return t, s, i, e.reason


@dataclass
class ScanReport:
    checked: int
    bad: list[tuple[str, str, int, str, str]]  # (task, split, index, file, reason)

    def lines(self) -> list[str]:
        return [f'{task} [{split}] {where}: {reason}' for task, split, _, where, reason in self.bad]


def scan_pool(
    pool: TaskPool,
    splits: Sequence[str] = ('train', 'val', 'test'),
    num_workers: int = 0,
    progress: bool = False,
) -> ScanReport:
    """Decode every image of ``splits`` (in DataLoader workers) and report the ones that fail."""
    ds = _ScanDataset(pool, splits)
    loader = DataLoader(ds, batch_size=32, num_workers=num_workers, collate_fn=lambda b: b)
    bad = []
    batches = loader
    if progress:
        batches = tqdm(loader, desc='scanning images', unit='batch', leave=False, disable=None)
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
        raise BadImagesError(
            f'{len(report.bad)} undecodable image(s) in the pool (data.bad_images: error; '
            f'set data.bad_images=skip to train without them):\n  {listing}'
        )
    by_split: dict[tuple[str, str], set[int]] = {}
    for task, split, i, _, _ in report.bad:
        by_split.setdefault((task, split), set()).add(i)
    tasks = {t.name: t for t in pool.tasks}
    for (task, split), indices in by_split.items():
        tasks[task].remove(split, indices)
        if len(tasks[task].splits[split]) == 0:
            del tasks[task].splits[split]
