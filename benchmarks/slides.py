"""Whole-slide extraction: tiles/s from slide to feature file vs ``mtdp extract`` on the same tiles as JPEG files.

Both use one :class:`mtdp_hub.features.FeatureExtractor` (same model, device, precision) and the same
DataLoader workers and batch size, alternating in one process:
  - ``slide``: :func:`mtdp_hub.features.slides.extract_slide` on a pyramidal TIFF written here (real H&E
    tiles of ``tests/assets`` in a mosaic): thumbnail, tissue segmentation, tile reads through OpenSlide in
    the workers, features, the HDF5 file and the QC pictures;
  - ``jpeg``: :func:`mtdp_hub.features.extract_source` on the same tiles, cut out beforehand as JPEG files.
The figure is the median of the per-round ratios slide/jpeg. Target: >= 0.90 on a CPU.
Separately, ``segment_tissue`` on the thumbnail a 100k x 80k px slide at 0.25 um/px has at the segmentation
scale (8 um/px: 3125 x 2500 px), median of 3 runs. Target: under 2 s. (Reading that thumbnail from the
slide's pyramid is not included: it depends on the file's levels.) Needs the slides extra and tifffile.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from mtdp_hub.features import FeatureExtractor, extract_source, make_source
from mtdp_hub.features.slides import (
    Slide,
    SlideSettings,
    TileSpec,
    TissueSettings,
    extract_slide,
    list_slides,
    read_slide_features,
)
from mtdp_hub.features.slides.tissue import segment_tissue

from .machine import emit
from .timing import interleaved_rates, ratios

ASSETS = Path(__file__).resolve().parents[1] / 'tests' / 'assets' / 'kather2016'


def write_mosaic_slide(path: Path, side: int, mpp: float) -> Path:
    """A ``side`` x ``side`` px pyramidal TIFF at ``mpp``: real H&E tiles over most of it, white margins."""
    tiles = [
        np.asarray(Image.open(p).convert('RGB'))
        for c in sorted(ASSETS.iterdir())
        if c.name < '07'
        for p in sorted(c.iterdir())
    ]
    image = np.full((side, side, 3), 244, np.uint8)
    margin, k = side // 10, 0
    for y in range(margin, side - margin - 150, 150):
        for x in range(margin, side - margin - 150, 150):
            image[y : y + 150, x : x + 150] = tiles[k % len(tiles)]
            k += 1
    with tifffile.TiffWriter(path) as tw:
        level = image
        for i in range(3):
            tw.write(
                level,
                tile=(256, 256),
                photometric='rgb',
                compression='zlib',
                subfiletype=int(i > 0),
                resolution=(1e4 / (mpp * 2**i),) * 2,
                resolutionunit='CENTIMETER',
                metadata=None,
            )
            level = np.asarray(Image.fromarray(level).resize((level.shape[1] // 2,) * 2, Image.BILINEAR))
    return path


def segmentation_seconds(repeats: int = 3) -> dict:
    """segment_tissue on a 3125 x 2500 px thumbnail (a 100k x 80k slide at 0.25 um/px, seen at 8 um/px)."""
    rng = np.random.default_rng(0)
    thumb = np.full((2500, 3125, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:2500, 0:3125]
    for cx, cy, r in ((900, 1200, 600), (2200, 1100, 700), (1600, 400, 250)):
        thumb[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = (190, 110, 170)
    thumb = np.clip(thumb.astype(np.int16) + rng.integers(-12, 13, thumb.shape), 0, 255).astype(np.uint8)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mask = segment_tissue(thumb, 8.0, TissueSettings())
        times.append(time.perf_counter() - t0)
    return {
        'thumbnail_px': [3125, 2500],
        'median_s': round(statistics.median(times), 3),
        'runs_s': [round(t, 3) for t in times],
        'tissue_fraction': round(float(mask.mean()), 4),
        'target_s': 2.0,
        'target_met': statistics.median(times) < 2.0,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        '--model', default='random:mtdp_resnet50', help='model spec (random:ARCH needs no weights)'
    )
    parser.add_argument('--side', type=int, default=3072, help='slide side in px at level 0')
    parser.add_argument('--slide-mpp', type=float, default=0.5)
    parser.add_argument('--mpp', type=float, default=0.5, help='tile scale')
    parser.add_argument('--tile', type=int, default=224)
    parser.add_argument('--img-size', type=int, default=None, help="model input size (default: the model's)")
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', default=None, help='also write the result here')
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    extractor = FeatureExtractor(args.model, img_size=args.img_size, device=args.device)
    settings = SlideSettings(tiles=TileSpec(mpp=args.mpp, tile=args.tile))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        entry = list_slides(write_mosaic_slide(tmp / 'slide.tif', args.side, args.slide_mpp))[0]
        extract_slide(extractor, entry, tmp / 'probe', settings, batch_size=args.batch_size, num_workers=0)
        coords = read_slide_features(tmp / 'probe' / 'slide.h5').coords
        size0 = round(args.tile * args.mpp / args.slide_mpp)
        (tmp / 'jpeg').mkdir()
        with Slide(entry.path) as slide:
            for i, (x, y) in enumerate(coords):
                tile = slide.read(x, y, 0, (size0, size0)).resize((args.tile, args.tile), Image.BILINEAR)
                tile.save(tmp / 'jpeg' / f'{i:06d}.jpg', quality=95)
        source = make_source(tmp / 'jpeg', labels=False)
        n = len(coords)

        def slide_round() -> int:
            extract_slide(
                extractor, entry, tmp / 'out', settings, batch_size=args.batch_size, num_workers=args.workers
            )
            return n

        def jpeg_round() -> int:
            extract_source(
                extractor,
                source,
                tmp / 'jpeg.safetensors',
                batch_size=args.batch_size,
                num_workers=args.workers,
                overwrite=True,
                progress=False,
            )
            return n

        rates = interleaved_rates(
            {'slide': slide_round, 'jpeg': jpeg_round}, rounds=args.rounds, warmup=1, device=extractor.device
        )
    r = ratios(rates, 'slide', 'jpeg')
    emit(
        {
            'benchmark': 'slides',
            'model': args.model,
            'tiles': n,
            'tile': args.tile,
            'mpp': args.mpp,
            'slide_side': args.side,
            'workers': args.workers,
            'batch_size': args.batch_size,
            'device': str(extractor.device),
            'slide_tiles_per_s': round(rates['slide']['median'], 2),
            'jpeg_tiles_per_s': round(rates['jpeg']['median'], 2),
            **r,
            'target_ratio': 0.90,
            'target_met': r['ratio'] >= 0.90,
            'segmentation': segmentation_seconds(),
            'rates': rates,
        },
        args.json,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
