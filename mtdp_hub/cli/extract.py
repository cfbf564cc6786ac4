"""``mtdp extract``: features of many images into one safetensors / Parquet file, resumable."""

from __future__ import annotations

import argparse
import json
import sys

from .options import add_extraction_options, add_model_options, add_weights_option


def _run(args: argparse.Namespace) -> int:
    from ..features import extract_features  # torch and timm only when the command runs

    stats = extract_features(
        args.model,
        args.input,
        args.output,
        seed=args.seed,
        layer=args.layer,
        tta=args.tta,
        img_size=args.img_size,
        device=args.device,
        precision=args.precision,
        labels=not args.no_labels,
        split=args.split,
        image_column=args.image_column,
        label_column=args.label_column,
        batch_size=args.batch_size,
        num_workers=args.workers,
        on_error=args.on_error,
        save_every=args.save_every,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        source_mpp=args.source_mpp,
        mpp=args.mpp,
        weights=args.weights,
    )
    failed = stats.pop('failed')
    print(json.dumps(stats, indent=1))
    if failed:
        print(
            f'{len(failed)} unreadable image(s) skipped, listed in the output metadata under "failed"',
            file=sys.stderr,
        )
    return 0


def add_cli(sub) -> argparse.ArgumentParser:
    """Add ``mtdp extract`` to an argparse ``subparsers`` object."""
    p = sub.add_parser(
        'extract',
        help='extract features of many images into safetensors/Parquet',
        description='Batch feature extraction: images in, one feature row per image out '
        '(safetensors or Parquet); a rerun resumes.',
    )
    add_model_options(p)
    add_weights_option(p)
    p.add_argument(
        '--input',
        required=True,
        help='folder (recursive; the first folder under it = label), .txt/.csv/.tsv file list, or datasets:NAME',
    )
    p.add_argument(
        '--output',
        required=True,
        help='the feature file, .safetensors or .parquet (checked before any work); an existing one is resumed',
    )
    add_extraction_options(p)
    p.add_argument(
        '--on-error',
        default='skip',
        choices=['skip', 'error'],
        help='unreadable images: skip them and list them in the metadata, or stop naming the first one',
    )
    p.add_argument(
        '--source-mpp',
        type=float,
        default=None,
        help="microns per pixel of the images: they are resized to --mpp first (the model's scale)",
    )
    p.add_argument(
        '--mpp',
        type=float,
        default=None,
        help='the scale to resize to with --source-mpp, um/px (default: the one the model records)',
    )
    p.add_argument('--no-labels', action='store_true', help='do not take labels from folder names')
    p.add_argument('--split', default=None, help='datasets source: the split to read (default: train)')
    p.add_argument('--image-column', default='image', help='datasets source: the column holding the images')
    p.add_argument('--label-column', default='label', help='datasets source: the column holding the labels')
    p.add_argument('--save-every', type=int, default=20000, help='write progress every N new images')
    p.add_argument('--overwrite', action='store_true', help='start over instead of resuming')
    p.set_defaults(func=_run)
    return p
