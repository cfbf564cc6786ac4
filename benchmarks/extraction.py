"""Extraction pipeline: ``mtdp extract`` img/s vs the bare forward of the same extractor.

One :class:`mtdp_hub.features.FeatureExtractor` (same model, device, precision, memory format,
batch size) is timed two ways, alternating in one process:
  - ``extract``: :func:`mtdp_hub.features.extract_source` (the function behind ``mtdp extract``) on
    JPEG files: DataLoader workers decode, resize and crop to uint8, the batches go pinned to the
    device, are normalised and run there with several in flight, and the features are written to
    a safetensors file (``overwrite=True`` each round). Worker start-up and the file write are part
    of each round, as in a real run: on a fast device use enough images per round that they weigh
    little (the CUDA default is 32768).
  - ``forward``: ``extractor.device_features`` on a synthetic uint8 batch already on the device
    (normalisation + forward + TTA average, nothing from the host), as many images as ``extract``.
The figure is the median of the per-round ratios extract/forward. Target on a GPU: >= 0.90.

The JPEGs: ``--data`` (a folder, recursive), or by default the real H&E tiles of
``tests/assets/kather2016`` resized to ``--jpeg-size`` px in their 8 flips/rotations and saved as
JPEG (quality 90), 192 distinct files, repeated to ``--images`` per round.

On a GPU (the command benchmarks/gpu.sh runs)::

    python -m benchmarks.extraction --device cuda --arch resnet50 --size 224 --precision bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from mtdp_hub.features import FeatureExtractor, extract_source, make_source
from mtdp_hub.features.pipeline import IN_FLIGHT, default_batch_size
from mtdp_hub.features.runtime import loader_workers
from mtdp_hub.images import find_images

from .machine import emit
from .timing import interleaved_rates, ratios

ASSETS = Path(__file__).resolve().parents[1] / 'tests' / 'assets' / 'kather2016'
_VIEWS = [None, Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM, Image.ROTATE_90, Image.ROTATE_180]
_VIEWS += [Image.ROTATE_270, Image.TRANSPOSE, Image.TRANSVERSE]


def write_jpegs(folder: Path, size: int) -> list[str]:
    """The 24 real H&E tiles of the test assets in their 8 flips/rotations, ``size`` px, as JPEG files."""
    paths = []
    for tile in sorted(p for c in sorted(ASSETS.iterdir()) if c.is_dir() for p in sorted(c.iterdir())):
        im = Image.open(tile).convert('RGB').resize((size, size), Image.BICUBIC)
        for k, view in enumerate(_VIEWS):
            path = folder / tile.parent.name / f'{tile.stem}_{k}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            (im if view is None else im.transpose(view)).save(path, quality=90)
            paths.append(str(path))
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='random:mtdp_resnet50', help='model spec as for mtdp extract')
    p.add_argument('--arch', default=None, help='a timm architecture, randomly initialised (random:ARCH)')
    p.add_argument('--data', default=None, help='folder of images (default: JPEGs made from the test tiles)')
    p.add_argument('--jpeg-size', type=int, default=224, help='side of the generated JPEGs, px')
    p.add_argument('--images', type=int, default=None, help='images per round (default: 32768 on CUDA, 256)')
    p.add_argument('--batch-size', type=int, default=None, help='default: as mtdp extract (256 on CUDA, 64)')
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers (default: as mtdp extract)')
    p.add_argument('--img-size', '--size', dest='img_size', type=int, default=None, help='model input px')
    p.add_argument('--device', default='auto')
    p.add_argument('--precision', default='auto', choices=['auto', 'fp32', 'bf16', 'fp16'])
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads in the main process')
    p.add_argument('--json', default=None, help='also write the result here')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = f'random:{args.arch}' if args.arch else args.model
    extractor = FeatureExtractor(model, img_size=args.img_size, device=args.device, precision=args.precision)
    device = extractor.device
    n_images = args.images or (32768 if device.type == 'cuda' else 256)
    batch_size = args.batch_size or default_batch_size(device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        unique = (
            [str(p) for p in find_images(Path(args.data))]
            if args.data
            else write_jpegs(Path(tmp) / 'jpeg', args.jpeg_size)
        )
        paths = (unique * (n_images // len(unique) + 1))[:n_images]
        source = make_source(paths, labels=True)
        out = Path(tmp) / 'features.safetensors'
        size = extractor.data_config['input_size'][1:]
        g = torch.Generator(device=device).manual_seed(0)
        synthetic = torch.randint(
            0, 256, (batch_size, 3, *size), dtype=torch.uint8, device=device, generator=g
        )
        reported: list[float] = []

        def extract() -> int:
            stats = extract_source(
                extractor,
                source,
                out,
                batch_size=batch_size,
                num_workers=args.workers,
                overwrite=True,
                progress=False,
            )
            reported.append(stats['img_per_s'])
            return stats['n_new']

        def forward() -> int:
            done = 0
            while done < n_images:
                extractor.device_features(synthetic[: n_images - done])
                done += min(batch_size, n_images - done)
            return done

        rates = interleaved_rates(
            {'extract': extract, 'forward': forward}, rounds=args.rounds, warmup=1, device=device
        )
    r = ratios(rates, 'extract', 'forward')
    emit(
        {
            'benchmark': 'extraction',
            'model': model,
            'data': args.data or f'test tiles as {args.jpeg_size} px JPEG (quality 90), {len(unique)} files',
            'images_per_round': n_images,
            'batch_size': batch_size,
            'workers': loader_workers(device, args.workers),
            'in_flight_batches': IN_FLIGHT,
            'device': str(device),
            'precision': str(extractor.amp_dtype).replace('torch.', '') if extractor.amp_dtype else 'fp32',
            'channels_last': extractor.channels_last,
            'input_size': extractor.data_config['input_size'],
            'extract_img_per_s': round(rates['extract']['median'], 2),
            'forward_img_per_s': round(rates['forward']['median'], 2),
            **r,
            'target_ratio': 0.90,
            'target_met': r['ratio'] >= 0.90,
            'extract_loop_img_per_s_reported': reported,
            'wall_s': round(time.perf_counter() - t0, 1),
            'rates': rates,
        },
        args.json,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
