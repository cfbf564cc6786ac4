"""The ``mtdp`` command: list, convert, export, push, extract, slides, evaluate.

Each command's options are defined once, in the module named for it; options that several
commands share are in :mod:`.options`. An :class:`~mtdp_hub.errors.MtdpError` (bad input, a
missing file or package) is printed as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import MtdpError
from ..version import __version__
from . import evaluate, extract, hub, slides

__all__ = ['build_parser', 'main']


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='mtdp', description=__doc__.split('\n\n')[0])
    parser.add_argument('--version', action='version', version=f'mtdp-hub {__version__}')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    hub.add_cli(sub)
    extract.add_cli(sub)
    slides.add_cli(sub)
    evaluate.add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MtdpError as e:
        print(f'mtdp {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
