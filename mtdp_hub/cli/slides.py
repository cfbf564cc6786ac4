"""``mtdp slides`` (and ``torchrun -m mtdp_hub.slides``): whole-slide images to per-slide feature files."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import MissingDependencyError
from .options import add_extraction_options, add_model_options, add_weights_option

SLIDES_EXTRA = 'whole-slide images need the slides extra: pip install mtdp-hub[slides]'


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _quiet(line: str) -> None:
    """--no-progress: no line per slide (the report and the summary still say what happened)."""


def _run(args: argparse.Namespace) -> int:
    try:  # the slides extra (OpenSlide, h5py, scikit-image) is optional: import it only when used
        from ..features.slides import (
            SlideSettings,
            TileSpec,
            TissueSettings,
            mpp_of_magnification,
            run_slides,
        )
    except ImportError as e:
        raise MissingDependencyError(f'{SLIDES_EXTRA} ({e})') from e
    mpp = mpp_of_magnification(args.mag) if args.mag else args.mpp
    settings = SlideSettings(
        tiles=TileSpec(mpp=mpp, tile=args.tile, overlap=args.overlap, min_tissue=args.min_tissue),
        tissue=TissueSettings(seg_mpp=args.seg_mpp, threshold=args.tissue_threshold),
        fmt=args.format,
        qc=not args.no_qc,
    )
    rows = run_slides(
        args.model,
        args.slides,
        args.out,
        settings,
        slide_mpp=args.slide_mpp,
        extractor_kwargs=dict(
            seed=args.seed,
            layer=args.layer,
            tta=args.tta,
            img_size=args.img_size,
            device=args.device,
            precision=args.precision,
            weights=args.weights,
        ),
        batch_size=args.batch_size,
        num_workers=args.workers,
        overwrite=args.overwrite,
        log=_quiet if args.no_progress else _log,
    )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r['status']] = counts.get(r['status'], 0) + 1
    if os.environ.get('RANK', '0') == '0':  # under torchrun, the first rank has the merged report
        print(json.dumps({'slides': len(rows), **counts, 'report': f'{args.out}/report.csv'}, indent=1))
    return 1 if counts.get('error') else 0


def add_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    add_weights_option(p)
    p.add_argument(
        '--slides',
        required=True,
        help='a folder of slides (recursive) or a CSV list: path[,slide_id][,mpp][,label]',
    )
    p.add_argument(
        '--out', required=True, help='output folder: <slide_id>.h5 (or .pt), qc/, report.json, report.csv'
    )
    g = p.add_argument_group('scale and tiles')
    scale = g.add_mutually_exclusive_group()
    scale.add_argument('--mpp', type=float, default=0.5, help='tile scale in microns per pixel (0.5 is ~20x)')
    scale.add_argument('--mag', default=None, help='tile scale as a magnification, e.g. 20x (= 0.5 um/px)')
    g.add_argument('--tile', type=int, default=224, help='tile side in pixels at that scale')
    g.add_argument('--overlap', type=int, default=0, help='pixels shared by neighbouring tiles')
    g.add_argument(
        '--slide-mpp',
        type=float,
        default=None,
        help='microns per pixel of slides whose metadata and list give none',
    )
    g = p.add_argument_group('tissue')
    g.add_argument(
        '--min-tissue', type=float, default=0.5, help='keep tiles that are at least this fraction tissue'
    )
    g.add_argument('--seg-mpp', type=float, default=8.0, help='scale of the segmentation thumbnail, um/px')
    g.add_argument(
        '--tissue-threshold',
        type=float,
        default=None,
        help='saturation threshold 0-255 (default: Otsu per slide)',
    )
    add_extraction_options(p.add_argument_group('features'))
    g = p.add_argument_group('output')
    g.add_argument(
        '--format', default='h5', choices=['h5', 'pt'], help='h5 (the CLAM/TRIDENT layout) or pt (torch.load)'
    )
    g.add_argument('--no-qc', action='store_true', help='no QC thumbnail / GeoJSON per slide')
    g.add_argument('--overwrite', action='store_true', help='redo slides whose feature file exists')


def add_cli(sub) -> argparse.ArgumentParser:
    """Add ``mtdp slides`` to an argparse ``subparsers`` object."""
    p = sub.add_parser(
        'slides',
        help='whole-slide images -> tissue -> tiles -> one feature file per slide',
        description='Whole-slide images to features at a physical scale; resumable; several '
        'jobs may share an output folder; under torchrun the slides are sharded.',
    )
    add_options(p)
    p.set_defaults(func=_run)
    return p
