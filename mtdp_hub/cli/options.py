"""Options that several ``mtdp`` commands share, defined once, and the help formatter of every command.

This module is imported whenever the parser is built (``mtdp --help`` included), so it imports
neither torch nor timm nor :mod:`mtdp_hub.features`: the choices below are plain constants, and
``tests/hub/test_cli.py`` checks that they equal the values the features code accepts
(``features.extractor.TTA_VIEWS``, ``features.runtime.PRECISIONS``).
"""

from __future__ import annotations

import argparse

__all__ = [
    'HelpFormatter',
    'Parser',
    'LAYER_HELP',
    'MODEL_HELP',
    'WEIGHTS_HELP',
    'TTA_CHOICES',
    'PRECISION_CHOICES',
    'add_model_options',
    'add_weights_option',
    'add_extraction_options',
]

TTA_CHOICES = ('none', 'flip3', 'flip4')
PRECISION_CHOICES = ('auto', 'fp32', 'bf16', 'fp16')

LAYER_HELP = (
    "'pooled' (final pooled features), 'trunc' (stage before last, pooled: "
    'ResNet50 layer3 -> 1024-d, as CLAM) or a stage index'
)
MODEL_HELP = 'timm name, hf-hub:ORG/NAME, local-dir:PATH or random:ARCH'
WEIGHTS_HELP = (
    'a local weight file (.safetensors, or a .pth/.bin read without running code) to load instead of '
    "the model's registered sources"
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, a switch's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return action.help or ''
        if '%(default)' in (action.help or '') or 'default:' in (action.help or ''):
            return action.help or ''
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults; sub-commands made with ``add_parser`` get it too."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def add_model_options(p: argparse._ActionsContainer) -> None:
    """Which backbone: ``--model`` (a spec) and ``--seed`` (the initialisation of ``random:ARCH``)."""
    p.add_argument('--model', required=True, help=MODEL_HELP)
    p.add_argument('--seed', type=int, default=0, help='initialisation seed for random:ARCH')


def add_weights_option(p: argparse._ActionsContainer) -> None:
    """``--weights FILE``: a local weight file instead of the model's registered sources."""
    p.add_argument('--weights', default=None, metavar='FILE', help=WEIGHTS_HELP)


def add_extraction_options(group: argparse._ActionsContainer) -> None:
    """How features are computed: layer, test-time flips, input size, batch, device, precision, workers."""
    group.add_argument('--layer', default='pooled', help=LAYER_HELP)
    group.add_argument(
        '--tta', default='none', choices=TTA_CHOICES, help='average the features over flipped views'
    )
    group.add_argument(
        '--img-size', type=int, default=None, help="input size in pixels (default: the model's own)"
    )
    group.add_argument(
        '--batch-size',
        type=int,
        default=None,
        help='extraction batch size (default: 256 on CUDA, 64 on the CPU)',
    )
    group.add_argument(
        '--device', default='auto', help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..."
    )
    group.add_argument(
        '--precision',
        default='auto',
        choices=PRECISION_CHOICES,
        help='autocast dtype (auto: bf16 on CUDA, fp32 on the CPU)',
    )
    group.add_argument(
        '--workers',
        type=int,
        default=None,
        help='DataLoader workers, capped at the CPUs available (default: every CPU but one, at most 16, on CUDA; half, at most 8, on the CPU)',
    )
    group.add_argument('--no-progress', action='store_true', help='no progress bar')
