"""``mtdp list``, ``convert``, ``export`` and ``push``: the model registry and Hugging Face folders."""

from __future__ import annotations

import argparse

import timm
from timm.models import get_pretrained_cfg

from .. import list_models
from ..convert import convert_mtdp_checkpoint
from ..export import export_folder, folder_checksums
from ..features.specs import check_spec
from ..push import push_folder


def _cmd_list(args: argparse.Namespace) -> int:
    for name in list_models(pretrained=True):
        cfg = get_pretrained_cfg(name)
        print(f'{name}\t{cfg.hf_hub_id or "-"}\t{cfg.description or ""}')
    return 0


def _print_checksums(folder) -> None:
    print(f'wrote {folder}')
    for name, digest in folder_checksums(folder).items():
        print(f'sha256  {digest}  {name}')


def _cmd_convert(args: argparse.Namespace) -> int:
    folder = convert_mtdp_checkpoint(
        args.checkpoint, args.out, model_name=args.model, overwrite=args.overwrite
    )
    _print_checksums(folder)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    check_spec(args.model)
    overlay = {'file': args.weights} if args.weights else None
    model = timm.create_model(args.model, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    if getattr(model, 'num_classes', 0):
        model.reset_classifier(0)
    _print_checksums(export_folder(model, args.out, overwrite=args.overwrite))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
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
    p = sub.add_parser('list', help='list the pretrained models and their Hub repos')
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        'convert', help='original mtdp .pth -> Hugging Face folder (safetensors, config, card, heads)'
    )
    p.add_argument('checkpoint', help='original mtdp checkpoint (.pth)')
    p.add_argument('--out', required=True, help='folder to write')
    p.add_argument(
        '--model', default=None, help='registry row, e.g. mtdp_resnet50.mtdp22 (default: from the keys)'
    )
    p.add_argument('--overwrite', action='store_true', help='replace an existing folder')
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser('export', help='any loadable timm model -> Hugging Face folder of its backbone')
    p.add_argument('model', help="timm name, 'local-dir:PATH' or 'hf-hub:ORG/NAME'")
    p.add_argument('--weights', default=None, help='weight file to load (.safetensors or .pth)')
    p.add_argument('--out', required=True, help='folder to write')
    p.add_argument('--overwrite', action='store_true', help='replace an existing folder')
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser('push', help='upload an exported folder to the Hugging Face Hub (dry run by default)')
    p.add_argument('folder')
    p.add_argument('repo_id', help='ORG/NAME')
    p.add_argument('--upload', action='store_true', help='really upload (default: dry run)')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision', default=None)
    p.set_defaults(func=_cmd_push)
