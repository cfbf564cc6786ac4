"""Images in, tensors out: the paper's augmentation, the multi-task dataset, the loaders, the scan.

Training transform (the paper, §III-F): random maximal square crop -> resize to ``size`` x
``size`` -> random horizontal and vertical flips -> ImageNet normalisation. Nothing else.
Validation uses the backbone's own eval preprocessing (:mod:`training.validation`).

The random choices of a training image come from the seed its draw carries (see
:mod:`training.sampler`), never from a global RNG, so a batch is the same whatever the number of
workers and after a resume.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from tqdm import tqdm

from mtdp_hub.errors import MtdpError, UnreadableImageError

from .pool import TaskPool

__all__ = [
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'train_transform',
    'train_transform_uint8',
    'normalise_uint8',
    'MultiTaskDataset',
    'SplitDataset',
    'EncodedMultiTaskDataset',
    'DeviceAugment',
    'DeviceNormalise',
    'collate_encoded',
    'ScanReport',
    'scan_pool',
    'apply_bad_image_policy',
    'BadImagesError',
]

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's; the paper's normalisation
# (x / 255 - mean) / std as (x - 255 mean) * 1 / (255 std): one float conversion and two in-place
# passes over a contiguous CHW tensor. The slower form (a float copy of the permuted view, then three
# new tensors) took more time than the JPEG decode (BENCHMARKS.md, data pipeline).
_MEAN255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_INV_STD255 = 1 / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)


def _to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def normalise_uint8(x: torch.Tensor) -> torch.Tensor:
    """uint8 CHW -> ImageNet-normalised float32 CHW: one conversion and two in-place passes."""
    return x.float().sub_(_MEAN255).mul_(_INV_STD255)


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
    return _to_uint8_tensor(_augment_pil(im, size, augment_params(*im.size, generator)))


def train_transform(im: Image.Image, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random maximal square crop, resize, random H and V flips, ImageNet normalisation."""
    return normalise_uint8(train_transform_uint8(im, size, generator))


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
        flat, seed = key if isinstance(key, tuple) else (key, key)
        t, split, i = self.index[flat]
        task = self.pool.tasks[t]
        generator = torch.Generator().manual_seed(int(seed))
        for attempt in range(len(task.splits[split])):
            j = (i + attempt) % len(task.splits[split])
            try:
                image = self._load(task, split, j, generator)
            except UnreadableImageError as e:
                if self.bad_images != 'skip':
                    raise
                warnings.warn(f'skipping {e} (bad_images: skip)', stacklevel=1)
                continue
            return image, task.splits[split].labels[j], t
        raise RuntimeError(f'task {task.name!r}: no readable image left in split {split!r}')

    def _load(self, task, split: str, j: int, generator: torch.Generator) -> torch.Tensor:
        return train_transform(task.load(split, j), self.size, generator)


class EncodedMultiTaskDataset(MultiTaskDataset):
    """The same draws for decoding on the GPU (``data.decode: gpu``): items are ``(EncodedImage, label, task)``.

    A worker only reads an RGB JPEG's bytes and its header (for the crop); everything else (other
    formats, grey or CMYK JPEGs, ``datasets`` images) is decoded and augmented here to uint8. The
    random choices are those of :func:`train_transform` for the same draw.
    """

    def _load(self, task, split: str, j: int, generator: torch.Generator) -> EncodedImage:
        item = task.splits[split].items[j]
        if task._hf is None and str(item).lower().endswith(('.jpg', '.jpeg')):
            try:
                with Image.open(item) as im:
                    size, mode, fmt = im.size, im.mode, im.format
                    data = Path(item).read_bytes()
            except OSError as e:
                raise UnreadableImageError(item, f'{type(e).__name__}: {e}') from e
            if fmt == 'JPEG' and mode == 'RGB':  # by content: a PNG named .jpg goes the Pillow way
                params = augment_params(*size, generator)
                return EncodedImage(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8), torch.tensor(params)
                )
        im = task.load(split, j)
        return EncodedImage(train_transform_uint8(im, self.size, generator), None)


@dataclass
class EncodedImage:
    """JPEG bytes with their crop/flip parameters, or an image already augmented to uint8 CHW (params None)."""

    data: torch.Tensor
    params: torch.Tensor | None

    def pin_memory(self) -> EncodedImage:  # called by DataLoader(pin_memory=True)
        return EncodedImage(self.data.pin_memory(), self.params)


def collate_encoded(batch):
    images, labels, tasks = zip(*batch)
    return list(images), torch.tensor(labels), torch.tensor(tasks)


class DeviceNormalise:
    """A uint8 NCHW batch -> on ``device``, in ``memory_format``, ImageNet-normalised float32
    (what :func:`normalise_uint8` does per image, for a whole batch on the device)."""

    def __init__(self, device: torch.device, memory_format=torch.contiguous_format):
        self.device, self.memory_format = device, memory_format
        self.mean = _MEAN255.view(1, 3, 1, 1).to(device)
        self.inv_std = _INV_STD255.view(1, 3, 1, 1).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x.float().sub_(self.mean).mul_(self.inv_std)


class DeviceAugment:
    """Decode a batch of :class:`EncodedImage` on ``device`` (nvJPEG on CUDA) and finish the paper's
    augmentation there: crop, resize, flips, ImageNet normalisation. One host-side CPU core then
    feeds far more images per second than with Pillow decoding."""

    def __init__(self, size: int, device: torch.device, memory_format=torch.contiguous_format):
        self.size, self.device = size, device
        self.normalise = DeviceNormalise(device, memory_format)

    def __call__(self, images: Sequence[EncodedImage]) -> torch.Tensor:
        encoded = [k for k, im in enumerate(images) if im.params is not None]
        out: list[torch.Tensor | None] = [None] * len(images)
        if encoded:
            decoded = decode_jpeg(
                [images[k].data for k in encoded], mode=ImageReadMode.RGB, device=self.device
            )
            for k, x in zip(encoded, decoded):
                out[k] = self._augment(x, images[k].params.tolist())
        for k, im in enumerate(images):
            if out[k] is None:
                out[k] = im.data.to(self.device, non_blocking=True)
        return self.normalise(torch.stack(out))

    def _augment(self, x: torch.Tensor, params: list[int]) -> torch.Tensor:
        x0, y0, side, flip_h, flip_v = params
        x = x[:, y0 : y0 + side, x0 : x0 + side]
        if side != self.size:
            x = torch.nn.functional.interpolate(
                x[None].float(),
                size=(self.size, self.size),
                mode='bilinear',
                antialias=True,
                align_corners=False,
            )[0]
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        if flip_h:
            x = x.flip(2)
        if flip_v:
            x = x.flip(1)
        return x


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
