"""A run's backbone and heads as a Hugging Face folder, through :func:`mtdp_hub.export.export_folder`."""

from __future__ import annotations

import json
from pathlib import Path

from mtdp_hub.export import export_folder

from . import checkpoint as ckpt
from .model import MultiTaskNet, create_backbone, set_training_preprocessing

__all__ = ['export_run', 'export_checkpoint']


def export_run(
    model: MultiTaskNet,
    tasks: list[dict],
    out_dir: Path,
    cfg: dict,
    metrics: dict,
    pool_markdown: str,
    iteration: int,
) -> Path:
    """Export the backbone (+ heads) with a card describing the run (pool, metrics, settings)."""
    lines = [
        '## Training run',
        '',
        f'Trained with mtdp-hub `training/` for {iteration} iterations '
        '(multi-task recipe of Mormont et al. 2021).',
        '',
        '### Task pool',
        '',
        pool_markdown,
        '',
    ]
    if metrics:
        lines += ['### Validation metrics (last evaluation)', '', '| metric | value |', '|---|---|']
        lines += [f'| {k} | {v:.4f} |' for k, v in sorted(metrics.items())] + ['']
    settings = {k: cfg[k] for k in ('model', 'optim', 'schedule')} | {
        'data': {'size': cfg['data']['size'], 'batch_size': cfg['data']['batch_size']}
    }
    lines += ['### Settings', '', '```json', json.dumps(settings, indent=2), '```']
    # export_folder writes a contiguous CPU copy; the heads file takes CPU copies of the tensors.
    return export_folder(
        model.backbone,
        out_dir,
        heads=dict(model.heads.items()),
        class_names={t['name']: t['classes'] for t in tasks},
        card_extra='\n'.join(lines),
        overwrite=True,
    )


def export_checkpoint(path: Path, out_dir: Path | None = None) -> Path:
    """Export from a saved checkpoint (``python -m training export``)."""
    state = ckpt.load_checkpoint(path)
    cfg = state['config']
    backbone = create_backbone(cfg['model']['arch'], init='random')
    set_training_preprocessing(backbone, cfg['data']['size'])
    model = MultiTaskNet(backbone, {t['name']: len(t['classes']) for t in state['tasks']})
    model.load_state_dict(state['model'])
    out_dir = out_dir or Path(path).parent.parent / 'export'
    return export_run(
        model,
        state['tasks'],
        out_dir,
        cfg,
        state.get('metrics', {}),
        state.get('pool_markdown', ''),
        state['iteration'],
    )
