"""Extraction pipeline: ``mtdp extract`` img/s vs the bare model forward on preloaded tensors.

Both use one :class:`mtdp_hub.features.FeatureExtractor` (same model, device, precision, memory
format), alternating in one process:
  - ``extract``: :func:`mtdp_hub.features.extract_source` (the function behind ``mtdp extract``)
    on JPEG files: DataLoader workers decode and preprocess, the model runs, the features are
    written to a safetensors file (``overwrite=True`` each round);
  - ``forward``: the same model on the same images, decoded and preprocessed beforehand, in batches
    already in memory (``extractor.model(x)`` under ``inference_mode`` + autocast).
The figure is the median of the per-round ratios extract/forward. Target: >= 0.90.
Model start-up (weights, DataLoader set-up of the first batch) is part of ``extract``'s round, as
it is part of a real run; use enough images per round that it is small.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from mtdp_hub.features import FeatureExtractor, extract_source, make_source
from mtdp_hub.features.runtime import autocast
from mtdp_hub.images import find_images

from .machine import emit
from .timing import interleaved_rates, ratios

DEFAULT_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'crc-he-5class' / 'val'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        '--model',
        default='random:mtdp_resnet50',
        help='model spec as for mtdp extract (random:ARCH needs no weights)',
    )
    parser.add_argument('--data', default=str(DEFAULT_DATA), help='folder of images (recursive)')
    parser.add_argument('--images', type=int, default=256, help='images per round')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument(
        '--workers', type=int, default=None, help='DataLoader workers (default: as mtdp extract)'
    )
    parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--precision', default='auto', choices=['auto', 'fp32', 'bf16', 'fp16'])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads in the main process')
    parser.add_argument('--json', default=None, help='also write the result here')
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [str(p) for p in find_images(Path(args.data))]
    paths = (paths * (args.images // max(len(paths), 1) + 1))[: args.images]
    source = make_source(paths, labels=True)
    extractor = FeatureExtractor(
        args.model, img_size=args.img_size, device=args.device, precision=args.precision
    )
    preloaded = [
        torch.stack(
            [extractor.transform(source.open(i)) for i in range(s, min(s + args.batch_size, len(paths)))]
        )
        for s in range(0, len(paths), args.batch_size)
    ]
    device = extractor.device
    memory_format = torch.channels_last if extractor.channels_last else torch.contiguous_format
    preloaded = [x.to(device, memory_format=memory_format) for x in preloaded]
    stats_seen: list[dict] = []

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'features.safetensors'

        def extract() -> int:
            stats = extract_source(
                extractor,
                source,
                out,
                batch_size=args.batch_size,
                num_workers=args.workers,
                overwrite=True,
                progress=False,
            )
            stats_seen.append({k: stats[k] for k in ('n_new', 'img_per_s', 'seconds')})
            return stats['n_new']

        @torch.inference_mode()
        def forward() -> int:
            with autocast(device, extractor.amp_dtype):
                for x in preloaded:
                    extractor.model(x)
            return len(paths)

        t0 = time.perf_counter()
        rates = interleaved_rates(
            {'extract': extract, 'forward': forward}, rounds=args.rounds, warmup=1, device=device
        )
    r = ratios(rates, 'extract', 'forward')
    emit(
        {
            'benchmark': 'extraction',
            'model': args.model,
            'images_per_round': len(paths),
            'batch_size': args.batch_size,
            'workers': args.workers,
            'device': str(device),
            'precision': str(extractor.amp_dtype).replace('torch.', '') if extractor.amp_dtype else 'fp32',
            'channels_last': extractor.channels_last,
            'input_size': extractor.data_config['input_size'],
            'extract_img_per_s': round(rates['extract']['median'], 2),
            'forward_img_per_s': round(rates['forward']['median'], 2),
            **r,
            'target_ratio': 0.90,
            'target_met': r['ratio'] >= 0.90,
            'extract_loop_img_per_s_reported': [s['img_per_s'] for s in stats_seen],
            'wall_s': round(time.perf_counter() - t0, 1),
            'rates': rates,
        },
        args.json,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
