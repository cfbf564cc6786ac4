"""The ``mtdp`` command: list, convert, export, push, extract, slides, evaluate.

Each command's options are defined once, in the module named for it; options that several
commands share are in :mod:`.options`. An :class:`~mtdp_hub.errors.MtdpError` (bad input, a
missing file or package) is printed as one line and exits with status 2; anything else is a bug
and keeps its traceback.

Building the parser imports no torch, timm or feature code (``mtdp --help``, ``--version`` and
``list`` answer at once): each command module imports what it needs inside the function that runs
the command.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from ..errors import MtdpError
from ..version import __version__
from . import evaluate, extract, hub, slides
from .options import Parser

_ANSI = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')  # terminal colour codes some libraries put in messages

__all__ = ['build_parser', 'main']

DESCRIPTION = (
    'mtdp-hub: multi-task pathology backbones for timm. Commands: list, convert, export, push, extract, '
    'slides, evaluate; mtdp COMMAND --help for each.'
)


def build_parser() -> Parser:
    parser = Parser(prog='mtdp', description=DESCRIPTION)
    parser.add_argument('--version', action='version', version=f'mtdp-hub {__version__}')
    sub = parser.add_subparsers(
        dest='command', required=True, metavar='COMMAND', parser_class=Parser, help='one of:'
    )
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
        print(f'mtdp {args.command}: error: {_ANSI.sub("", str(e))}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
