"""``mtdp evaluate``: the paper's transfer protocol for several backbones, side by side.

Building this parser imports neither torch, timm, scikit-learn nor :mod:`mtdp_hub.evaluation`
(``mtdp --help`` answers at once): the defaults below are plain constants, equal to those of
:mod:`mtdp_hub.evaluation` (a test checks it), and the command imports the evaluation code when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import MODEL_HELP, HelpFormatter, add_extraction_options

MODES = ('linear', 'finetune')  # mtdp_hub.evaluation.MODES
LR_GRID = (1e-3, 1e-4, 1e-5, 1e-6)  # mtdp_hub.evaluation.finetune.LR_GRID, the paper's grid
C_GRID = tuple(10.0**k for k in range(-10, 1))  # mtdp_hub.evaluation.linear.C_GRID, the paper's grid

DESCRIPTION = """\
Compare backbones on one classification task with the paper's protocol, side by side.

Task folder: TASK/{train,val,test}/CLASS/* (val optional; --test-split chooses the split scored
as the test set). The group id of an image (patient, slide) is its file-name prefix before the
first "_": cross-validation never puts one group in two folds.

Models: a spec (timm name, hf-hub:ORG/NAME, local-dir:PATH, random:ARCH) or NAME=SPEC, where the
short NAME is what the table and the plot show. Every model is loaded once before any feature is
extracted, so a model that cannot load stops the command at once, named.

Time: linear mode extracts features once per model (once per seed for random:ARCH). Fine-tuning
trains every model for EPOCHS x LRS x SEEDS epochs: with the defaults 100 x 4 x 5 = 2000 epochs
per model, hours on a GPU and far longer on a CPU. A first look on a CPU:
--epochs 2 --lrs 1e-4 --seeds 1 --max-per-class 20.

Output: OUT/results.md (table, warnings, per-class metrics), OUT/results.json (everything),
OUT/results.png (plot); features are cached under OUT/cache. The report is rewritten after each
model, so a model that fails later keeps the results of those before it.
"""


def parse_weights(items: list[str] | None) -> dict[str, str]:
    """``--weights`` values -> ``{model: FILE}``: ``NAME=FILE`` (NAME as given in --models, alias or
    spec), or a bare ``FILE``, kept under the key ``''`` (allowed with one model only)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, file = item.partition('=')
        key, value = (name, file) if sep else ('', item)
        if key in out:
            from ..errors import InvalidOptionError

            raise InvalidOptionError(f'--weights: two weight files for {key or "the model"}')
        out[key] = value
    return out


def _run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate  # torch, timm and scikit-learn only when the command runs
    from ..evaluation.finetune import FinetuneConfig

    ft = FinetuneConfig(
        epochs=args.epochs,
        lrs=tuple(args.lrs),
        batch_size=args.ft_batch_size,
        optimizer=args.optimizer,
        img_size=args.img_size,
        device=args.device,
        precision=args.precision,
        num_workers=args.workers,
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    seeds = args.seed_list if args.seed_list else args.seeds
    result = evaluate(
        args.task,
        args.models,
        modes=args.mode,
        seeds=seeds,
        out=args.out,
        weights=parse_weights(args.weights),
        test_split=args.test_split,
        classifier=args.classifier,
        Cs=tuple(args.cs),
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
        description=DESCRIPTION,
    )
    p.formatter_class = _Formatter
    p.add_argument('--task', required=True, help='task folder TASK/{train,val,test}/CLASS/*')
    p.add_argument(
        '--models',
        nargs='+',
        required=True,
        metavar='[NAME=]SPEC',
        help=f'models to compare ({MODEL_HELP}), each optionally named NAME=SPEC for the table and plot; '
        'the first is the reference of the significance marks',
    )
    p.add_argument(
        '--weights',
        nargs='+',
        default=None,
        metavar='NAME=FILE',
        help='a local weight file for a model of --models (NAME: its alias, or its spec as given), '
        'loaded instead of its registered sources; with a single model a bare FILE is enough',
    )
    p.add_argument('--mode', nargs='+', default=['linear'], choices=list(MODES), help='protocols to run')
    p.add_argument(
        '--seeds',
        type=int,
        default=5,
        help='number of seeds 0..N-1 (random:ARCH initialisation, fine-tuning, CV fold shuffling)',
    )
    p.add_argument(
        '--seed-list',
        type=int,
        nargs='+',
        default=None,
        metavar='SEED',
        help='explicit seeds instead of --seeds',
    )
    p.add_argument(
        '--test-split',
        default='test',
        choices=['test', 'val'],
        help='the split folder scored as the test set (val: for data with train/val only; there is then '
        'no val split)',
    )
    p.add_argument('--out', required=True, help='report folder (features cached under OUT/cache)')
    p.add_argument(
        '--max-per-class',
        type=int,
        default=None,
        help='use the first N images of each class in each split (default: all)',
    )
    add_extraction_options(p.add_argument_group('features (both modes)'))
    _add_linear_options(p.add_argument_group('linear mode'))
    _add_finetune_options(p.add_argument_group('finetune mode'))
    p.set_defaults(func=_run)
    return p


def _add_linear_options(g) -> None:
    g.add_argument(
        '--classifier',
        default='svm',
        choices=['svm', 'logreg'],
        help='linear SVM (the paper) or logistic regression',
    )
    g.add_argument('--cv-folds', type=int, default=5, help='grouped cross-validation folds that tune C')
    g.add_argument(
        '--cs',
        type=float,
        nargs='+',
        default=list(C_GRID),
        metavar='C',
        help="the grid of C values tuned by CV (default: the paper's 1e-10, 1e-9, ..., 1)",
    )


def _add_finetune_options(g) -> None:
    g.add_argument('--epochs', type=int, default=100, help='epochs per learning rate and seed')
    g.add_argument(
        '--lrs',
        type=float,
        nargs='+',
        default=list(LR_GRID),
        help="learning rates, the best on val is kept (the paper's grid); without a val split give exactly one",
    )
    g.add_argument(
        '--optimizer', default='sgd', choices=['sgd', 'adam'], help='SGD with momentum 0.9, or Adam'
    )
    g.add_argument('--ft-batch-size', type=int, default=32, help='fine-tuning batch size')
    g.add_argument(
        '--max-steps-per-epoch',
        type=int,
        default=None,
        help='cap the steps of an epoch (quick trials; default: all)',
    )


class _Formatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The shared formatter (defaults shown), keeping the description's line breaks."""
