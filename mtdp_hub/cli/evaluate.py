"""``mtdp evaluate``: the paper's transfer protocol for several backbones, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..evaluation import MODES, evaluate
from ..evaluation.finetune import LR_GRID, FinetuneConfig
from .options import MODEL_HELP, add_extraction_options


def _run(args: argparse.Namespace) -> int:
    ft = FinetuneConfig(
        epochs=args.epochs,
        lrs=tuple(args.lrs),
        batch_size=args.ft_batch_size,
        optimizer=args.optimizer,
        img_size=args.img_size,
        device=args.device,
        precision=args.precision,
        num_workers=args.workers if args.workers is not None else 4,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    seeds = args.seed_list if args.seed_list else args.seeds
    result = evaluate(
        args.task,
        args.models,
        modes=args.mode,
        seeds=seeds,
        out=args.out,
        classifier=args.classifier,
        cv_folds=args.cv_folds,
        layer=args.layer,
        tta=args.tta,
        img_size=args.img_size,
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
        max_per_class=args.max_per_class,
        finetune_cfg=ft,
        progress=not args.no_progress,
    )
    print(Path(result['files']['markdown']).read_text())
    print('report: ' + ', '.join(result['files'].values()))
    return 0


def add_cli(sub) -> argparse.ArgumentParser:
    """Add ``mtdp evaluate`` to an argparse ``subparsers`` object."""
    p = sub.add_parser(
        'evaluate',
        help="compare backbones on a task with the paper's protocol (linear SVM / fine-tuning)",
        description='Task folder layout: {task}/{train,val,test}/{class}/*, val optional; the group id '
        '(patient/slide) is the file-name prefix before the first "_".',
    )
    p.add_argument('--task', required=True, help='task folder {train,val,test}/{class}/*')
    p.add_argument(
        '--models',
        nargs='+',
        required=True,
        help=f'model specs ({MODEL_HELP}); the first is the reference for significance marks',
    )
    p.add_argument('--mode', nargs='+', default=['linear'], choices=list(MODES))
    p.add_argument('--seeds', type=int, default=5, help='number of seeds (0..N-1)')
    p.add_argument('--seed-list', type=int, nargs='+', default=None, help='explicit seeds instead of --seeds')
    p.add_argument('--out', required=True, help='report folder (features cached under OUT/cache)')
    p.add_argument(
        '--max-per-class', type=int, default=None, help='use the first N images per class and split'
    )
    add_extraction_options(p.add_argument_group('features (both modes)'))
    g = p.add_argument_group('linear mode')
    g.add_argument('--classifier', default='svm', choices=['svm', 'logreg'])
    g.add_argument('--cv-folds', type=int, default=5)
    g = p.add_argument_group('finetune mode')
    g.add_argument('--epochs', type=int, default=100)
    g.add_argument('--lrs', type=float, nargs='+', default=list(LR_GRID))
    g.add_argument('--optimizer', default='sgd', choices=['sgd', 'adam'])
    g.add_argument('--ft-batch-size', type=int, default=32)
    g.add_argument('--max-steps-per-epoch', type=int, default=None)
    p.set_defaults(func=_run)
    return p
