"""Command line: ``python -m training [--config C] [--pool P] [--resume RUN] [--set k=v ...]``,
``python -m training scan --pool P``, ``python -m training export --run RUN`` and
``python -m training keys`` (every key ``--set`` accepts, with its default)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtdp_hub.errors import MtdpError
from mtdp_hub.features import runtime

from .checkpoint import list_checkpoints
from .config import ConfigError, config_keys, load_config
from .data import scan_pool
from .export import export_checkpoint
from .guards import NonFiniteBatchError
from .loop import NonFiniteLossError, TrainingInterrupted
from .loop import main as train
from .pool import PoolError, load_pool


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--config', help='a YAML config (training/configs/*.yaml)')
    p.add_argument('--pool', help="a pool YAML file, or 'demo' (overrides the config's pool)")
    p.add_argument(
        '--resume',
        metavar='RUN_DIR',
        help='continue the run in this folder (its config.yaml unless --config)',
    )
    p.add_argument(
        '--set',
        dest='overrides',
        action='append',
        default=[],
        metavar='SECTION.KEY=VALUE',
        help='override one config value, e.g. --set optim.lr=1e-4 (repeatable)',
    )


def _train(args) -> int:
    overrides = list(args.overrides)
    config = args.config
    if args.resume:
        run_dir = Path(args.resume)
        if config is None:
            config = run_dir / 'config.yaml'
            if not config.is_file():
                print(f'error: {run_dir} has no config.yaml; give --config', file=sys.stderr)
                return 2
        overrides += [f'run.output_dir={run_dir.parent}', f'run.name={run_dir.name}', 'run.resume=auto']
    if args.pool:
        overrides.append(f'pool={args.pool}')
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print(f'config error: {e}', file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except TrainingInterrupted as e:
        print(
            f'\n{e}. Continue with: python -m training --resume {Path(cfg.run.output_dir) / cfg.run.name}',
            file=sys.stderr,
        )
        return 128 + e.signum
    except (NonFiniteLossError, NonFiniteBatchError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 3
    except MtdpError as e:
        print(f'error: {e}', file=sys.stderr)  # bad input or a missing resource: one line, no traceback
        return 2
    metrics = summary.get('metrics', {})
    if metrics:
        print('final validation: ' + ', '.join(f'{k} {v:.3f}' for k, v in metrics.items()))
    return 0


def _scan(args) -> int:
    try:
        pool = load_pool(args.pool)
    except PoolError as e:
        print(f'pool error: {e}', file=sys.stderr)
        return 2
    workers = min(args.workers, runtime.cpu_share())
    if workers < args.workers:
        print(f'--workers {args.workers} capped at {workers}: the CPUs available', file=sys.stderr)
    report = scan_pool(pool, args.splits, num_workers=workers, progress=True)
    for line in report.lines():
        print(line)
    print(f'{report.checked} images checked in {len(pool)} tasks, {len(report.bad)} undecodable')
    return 1 if report.bad else 0


def _export(args) -> int:
    run = Path(args.run)
    path = Path(args.checkpoint) if args.checkpoint else (list_checkpoints(run / 'checkpoints') or [None])[-1]
    if path is None:
        print(f'error: no checkpoint in {run / "checkpoints"}', file=sys.stderr)
        return 2
    try:
        out = export_checkpoint(
            path, Path(args.out) if args.out else None, run_dir=run, overwrite=args.overwrite
        )
    except MtdpError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'exported {path} to {out}')
    return 0


def keys_text() -> str:
    """The keys of ``--set`` with their defaults and one-line help, one per line."""
    rows = [
        (key, 'null' if v is None else str(v).lower() if isinstance(v, bool) else str(v), h)
        for key, v, h in config_keys()
    ]
    width = max(len(k) for k, _, _ in rows)
    dwidth = max(len(v) for _, v, _ in rows)
    return '\n'.join(f'  {k:<{width}}  {v:<{dwidth}}  {h}'.rstrip() for k, v, h in rows)


def _keys(args) -> int:
    print('keys of --set SECTION.KEY=VALUE (and of a config file), with their defaults:')
    print(keys_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ('scan', 'export', 'keys'):
        parser = argparse.ArgumentParser(prog='python -m training')
        sub = parser.add_subparsers(dest='command', required=True)
        scan = sub.add_parser('scan', help='decode every image of a pool and list the unreadable ones')
        scan.add_argument('--pool', required=True)
        scan.add_argument('--splits', nargs='+', default=['train', 'val', 'test'])
        scan.add_argument('--workers', type=int, default=4, help='DataLoader workers')
        scan.set_defaults(func=_scan)
        export = sub.add_parser('export', help="export a run's backbone from a checkpoint")
        export.add_argument('--run', required=True, help='the run folder')
        export.add_argument('--checkpoint', help='a checkpoint file (default: the latest)')
        export.add_argument('--out', help='output folder (default: RUN/export)')
        export.add_argument(
            '--overwrite',
            action='store_true',
            help='replace an existing output folder (never the run folder or the checkpoint)',
        )
        export.set_defaults(func=_export)
        keys = sub.add_parser('keys', help='list the config keys --set accepts, with their defaults')
        keys.set_defaults(func=_keys)
        args = parser.parse_args(argv)
        return args.func(args)
    parser = argparse.ArgumentParser(
        prog='python -m training',
        description="Multi-task pre-training with the paper's recipe.\nOther commands: python -m training scan "
        "--pool P (decode every image), export --run RUN (a run's backbone),\nkeys (the list below).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='subcommands: scan --pool P | export --run RUN | keys\n\nconfig keys (--set SECTION.KEY=VALUE), '
        'with their defaults:\n' + keys_text(),
    )
    _train_args(parser)
    args = parser.parse_args(argv)
    return _train(args)


if __name__ == '__main__':
    sys.exit(main())
