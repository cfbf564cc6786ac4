"""Options that several ``mtdp`` commands share, defined once."""

from __future__ import annotations

import argparse

from ..features.extractor import TTA_VIEWS
from ..features.runtime import PRECISIONS

LAYER_HELP = (
    "'pooled' (final pooled features), 'trunc' (stage before last, pooled: "
    'ResNet50 layer3 -> 1024-d, as CLAM) or a stage index'
)


MODEL_HELP = 'timm name, hf-hub:ORG/NAME, local-dir:PATH or random:ARCH'


def add_model_options(p: argparse._ActionsContainer) -> None:
    """Which backbone: ``--model`` (a spec) and ``--seed`` (the initialisation of ``random:ARCH``)."""
    p.add_argument('--model', required=True, help=MODEL_HELP)
    p.add_argument('--seed', type=int, default=0, help='initialisation seed for random:ARCH')


def add_extraction_options(group: argparse._ActionsContainer) -> None:
    """How features are computed: layer, test-time flips, input size, batch, device, precision, workers."""
    group.add_argument('--layer', default='pooled', help=LAYER_HELP)
    group.add_argument('--tta', default='none', choices=list(TTA_VIEWS), help='average over flipped views')
    group.add_argument('--img-size', type=int, default=None, help="override the model's input size")
    group.add_argument('--batch-size', type=int, default=64, help='extraction batch size')
    group.add_argument(
        '--device', default='auto', help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..."
    )
    group.add_argument(
        '--precision',
        default='auto',
        choices=PRECISIONS,
        help='autocast dtype (auto: bf16 on CUDA, fp32 on the CPU)',
    )
    group.add_argument('--workers', type=int, default=None, help='DataLoader workers (default: min(8, CPUs))')
    group.add_argument('--no-progress', action='store_true', help='no progress bar')
