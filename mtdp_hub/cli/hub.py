"""``mtdp list``, ``convert``, ``export`` and ``push``: the model registry and Hugging Face folders.

torch and timm are imported inside the commands that need them, never when the parser is built:
``mtdp list`` reads :mod:`mtdp_hub.catalog` only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..catalog import ENV_WEIGHTS_DIR, RELEASES, local_weights
from .options import MODEL_HELP, add_weights_option


def _cmd_list(args: argparse.Namespace) -> int:
    found = {name: local_weights(name) for name in sorted(RELEASES)}
    rows = [('MODEL', 'LOCAL WEIGHTS', 'HUB REPO', 'DESCRIPTION')]
    for name, files in found.items():
        rows.append(
            (name, str(files[0]) if files else 'no', RELEASES[name].hf_hub_id, RELEASES[name].summary)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print('  '.join(cell.ljust(w) for cell, w in zip(row, widths)) + '  ' + row[3])
    if not any(found.values()):
        print(
            f'\nNo weights found locally. Put the original files in a folder and set {ENV_WEIGHTS_DIR} to it, '
            'or pass --weights FILE (mtdp extract / evaluate / export).'
        )
    return 0


def _print_checksums(folder) -> None:
    from ..export import folder_checksums

    print(f'wrote {folder}')
    for name, digest in folder_checksums(folder).items():
        print(f'sha256  {digest}  {name}')


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import convert_mtdp_checkpoint

    folder = convert_mtdp_checkpoint(
        args.checkpoint, args.out, model_name=args.model, overwrite=args.overwrite
    )
    _print_checksums(folder)
    return 0


def _copy_description(spec: str, cfg: dict, weights: str | None) -> str:
    """What ``mtdp export SPEC`` copied, for the card."""
    arch = cfg.get('architecture', spec)
    if weights:
        source = f'the weight file `{Path(weights).name}`'
    elif spec.startswith(('hf-hub:', 'local-dir:')):
        source = f'`{spec}` (whose own card says how they were made)'
    else:
        source = f"timm's pretrained weights `{arch}.{cfg['tag']}`" if cfg.get('tag') else f'`{spec}`'
    paper = f' Paper: {cfg["paper_ids"]}.' if cfg.get('paper_ids') else ''
    return (
        f'A copy of {source} (architecture `{arch}`), written as a Hugging Face folder by `mtdp export`; '
        f'the weights are unchanged.{paper}'
    )


def _cmd_export(args: argparse.Namespace) -> int:
    from ..errors import InvalidOptionError
    from ..export import export_folder
    from ..features.specs import RANDOM_PREFIX, check_spec, is_random, load_backbone
    from ..hubcheck import check_model_reachable, hub_errors

    check_spec(args.model)
    if not args.weights:
        check_model_reachable(args.model)  # seconds, not huggingface_hub's retries, without a network
    if is_random(args.model) and args.weights:
        raise InvalidOptionError(f'{args.model}: a random: model takes no --weights')
    with hub_errors(args.model):
        model = load_backbone(args.model, seed=args.seed, weights=args.weights)
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    arch = cfg.get('architecture') or args.model.removeprefix(RANDOM_PREFIX)
    if is_random(args.model):
        about = (
            f'A `{arch}` with random initial weights (timm default initialisation, seed {args.seed}): '
            'not trained, a from-scratch baseline.'
        )
        kwargs = dict(about=about, trained=True, tags=('random-init',))
    else:
        # A --weights file is not what the registry row (licence, paper, ...) describes.
        kwargs = dict(about=_copy_description(args.model, cfg, args.weights), trained=bool(args.weights))
        if arch.startswith('mtdp_') and cfg.get('tag') and not args.weights:
            kwargs['model_name'] = f'{arch}.{cfg["tag"]}'  # the released model's own card
    _print_checksums(export_folder(model, args.out, overwrite=args.overwrite, **kwargs))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from ..push import push_folder

    files = push_folder(
        args.folder, args.repo_id, dry_run=not args.upload, private=args.private, revision=args.revision
    )
    verb = 'uploaded' if args.upload else 'would upload (dry run; add --upload to send)'
    print(f'{verb} to {args.repo_id}:')
    for path in files:
        print(f'  {path.name}\t{path.stat().st_size} bytes')
    return 0


def add_cli(sub) -> None:
    """Add ``list``, ``convert``, ``export`` and ``push`` to an argparse ``subparsers`` object."""
    p = sub.add_parser(
        'list',
        help='list the released models, whether their weights are on this machine, and their Hub repos',
        description=f'The released models; LOCAL WEIGHTS is the first file found in ${ENV_WEIGHTS_DIR}, '
        'the Hugging Face cache or the download cache (checked by SHA-256 when loaded), else no.',
    )
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        'convert',
        help='original mtdp .pth -> Hugging Face folder (safetensors, config, card, heads)',
        description='Convert an original mtdp checkpoint. A checkpoint of python -m training is '
        'exported with python -m training export instead.',
    )
    p.add_argument('checkpoint', help='original mtdp checkpoint (.pth), read without running code')
    p.add_argument('--out', required=True, help='folder to write')
    p.add_argument(
        '--model', default=None, help='registry row, e.g. mtdp_resnet50.mtdp22 (default: from the keys)'
    )
    p.add_argument('--overwrite', action='store_true', help='replace an existing folder')
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser('export', help='any loadable timm model -> Hugging Face folder of its backbone')
    p.add_argument('model', help=MODEL_HELP)
    add_weights_option(p)
    p.add_argument('--seed', type=int, default=0, help='initialisation seed for random:ARCH')
    p.add_argument('--out', required=True, help='folder to write')
    p.add_argument('--overwrite', action='store_true', help='replace an existing folder')
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser('push', help='upload an exported folder to the Hugging Face Hub (dry run by default)')
    p.add_argument('folder', help='an exported folder (mtdp convert / export, python -m training export)')
    p.add_argument('repo_id', help='the Hub repo, ORG/NAME (created when missing)')
    p.add_argument('--upload', action='store_true', help='really upload (default: dry run, list the files)')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--revision', default=None, help='branch to commit to (default: main)')
    p.set_defaults(func=_cmd_push)
