"""Data pipeline: decode + the paper's augmentation, img/s per core (one process, one thread).

Variants, interleaved in one process over the same JPEG files (one worker's view; a DataLoader
with N workers scales this by about N while cores last):
  - ``project``: the training data path, ``training.data.MultiTaskDataset`` items (``open_rgb`` ->
    random maximal square crop -> resize -> H/V flips -> uint8 CHW; the training loop converts and
    normalises the batch on the device with ``mtdp_hub.features.pixels.Normalise``).
  - ``torchvision``: the baseline, ``torchvision.datasets.ImageFolder`` + Pillow + the equivalent
    transforms (maximal square crop, Resize, RandomHorizontalFlip, RandomVerticalFlip, ToTensor,
    Normalize).
  - ``project_uint8``: the same transform called directly (``training.data.train_transform_uint8``,
    without the dataset's indexing and seeding).
  - ``decode_jpeg_uint8``: ``torchvision.io.decode_jpeg`` on the file bytes -> crop/resize/flips on
    the uint8 tensor (normalisation left to the batch), an alternative decoder.
  - ``pil_draft_uint8`` (only when ``size`` is smaller than the images): as ``project_uint8`` with
    ``Image.draft`` so the JPEG decoder downscales by 1/2, 1/4 or 1/8 while decoding.
Target: >= 1,000 img/s per core for the project's path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as F2

from mtdp_hub.images import open_rgb, to_rgb
from training.data import IMAGENET_MEAN, IMAGENET_STD, MultiTaskDataset, train_transform_uint8
from training.pool import load_pool

from .machine import emit
from .timing import interleaved_rates

DEFAULT_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'crc-he-5class'


class RandomMaxSquareCrop:
    """The largest square at a random position (identity on square images)."""

    def __call__(self, im: Image.Image) -> Image.Image:
        w, h = im.size
        side = min(w, h)
        x0, y0 = np.random.randint(0, w - side + 1), np.random.randint(0, h - side + 1)
        return im.crop((x0, y0, x0 + side, y0 + side))


def torchvision_baseline(root: Path, size: int) -> torchvision.datasets.ImageFolder:
    tf = T.Compose(
        [
            RandomMaxSquareCrop(),
            T.Resize((size, size)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return torchvision.datasets.ImageFolder(str(root / 'train'), transform=tf)


def drafted_uint8(path: str, size: int, g: torch.Generator) -> torch.Tensor:
    """``project_uint8`` with the JPEG decoded at a reduced scale (``Image.draft``) first."""
    with Image.open(path) as im:
        im.draft('RGB', (size, size))
        im = to_rgb(im)
    return train_transform_uint8(im, size, g)


def tensor_uint8(path: str, size: int, g: torch.Generator) -> torch.Tensor:
    """decode_jpeg (libjpeg-turbo via torchvision) -> crop/resize/flips on the uint8 tensor."""
    x = decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    h, w = x.shape[1:]
    side = min(w, h)
    x0 = int(torch.randint(0, w - side + 1, (1,), generator=g))
    y0 = int(torch.randint(0, h - side + 1, (1,), generator=g))
    x = x[:, y0 : y0 + side, x0 : x0 + side]
    if side != size:
        x = F2.resize(x, [size, size], antialias=True)
    flips = torch.rand(2, generator=g)
    if flips[0] < 0.5:
        x = x.flip(2)
    if flips[1] < 0.5:
        x = x.flip(1)
    return x.contiguous()


def measure_size(pool, root: Path, paths: list[str], size: int, n: int, rounds: int) -> dict:
    """All variants at one output size, interleaved; img/s medians and the per-round rates."""
    project = MultiTaskDataset(pool, ['train'], size)
    baseline = torchvision_baseline(root, size)
    native = Image.open(paths[0]).size
    order = np.random.default_rng(0).permutation(len(project))
    cursor = {'i': 0}
    g = torch.Generator().manual_seed(0)

    def take() -> list[int]:
        i = cursor['i']
        cursor['i'] = (i + n) % len(order)
        return [int(order[(i + k) % len(order)]) for k in range(n)]

    def run(fn):
        def go() -> int:
            for j in take():
                fn(j)
            return n

        return go

    variants = {
        'project': run(lambda j: project[(j, j)]),
        'torchvision': run(lambda j: baseline[j]),
        'project_uint8': run(lambda j: train_transform_uint8(open_rgb(paths[j]), size, g)),
        'decode_jpeg_uint8': run(lambda j: tensor_uint8(paths[j], size, g)),
    }
    if size < min(native):
        variants['pil_draft_uint8'] = run(lambda j: drafted_uint8(paths[j], size, g))
    rates = interleaved_rates(variants, rounds=rounds, warmup=1)
    res = {name: round(r['median'], 1) for name, r in rates.items()}
    res['project_vs_torchvision'] = round(res['project'] / res['torchvision'], 3)
    res['target_img_per_s_per_core'] = 1000
    res['project_target_met'] = res['project'] >= 1000
    res['best_variant'] = max(rates, key=lambda k: rates[k]['median'])
    res['native_size'] = list(native)
    res['rates'] = rates
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--data', default=str(DEFAULT_DATA), help='ImageFolder root with train/{class}/*.jpg')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 112], help='output sizes to measure')
    parser.add_argument('--images-per-round', type=int, default=200)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=1, help='torch threads (1: per-core figures)')
    parser.add_argument('--json', default=None, help='also write the result here')
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    root = Path(args.data)
    pool = load_pool({'tasks': [{'name': root.name, 'root': str(root)}]}, ['train'], None)
    n = args.images_per_round
    results = {}
    t0 = time.perf_counter()
    paths = [str(p) for p in pool.tasks[0].splits['train'].items]
    for size in args.sizes:
        results[f'size_{size}'] = measure_size(pool, root, paths, size, args.images_per_round, args.rounds)
    emit(
        {
            'benchmark': 'data_pipeline',
            'data': str(root),
            'n_images': len(paths),
            'threads': args.threads,
            'images_per_round': n,
            'rounds': args.rounds,
            'pid_cpu_affinity': len(os.sched_getaffinity(0)),
            'wall_s': round(time.perf_counter() - t0, 1),
            **results,
        },
        args.json,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
