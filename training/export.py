"""A run's backbone and heads as a Hugging Face folder, through :func:`mtdp_hub.export.export_folder`."""

from __future__ import annotations

import json
from pathlib import Path

from mtdp_hub._io import refuse_output_holding
from mtdp_hub.errors import OutputExistsError
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
    *,
    overwrite: bool = True,
) -> Path:
    """Export the backbone (+ heads) with a card describing the run (pool, metrics, settings).

    ``overwrite`` (the end-of-run export replaces its own earlier ``RUN/export``) replaces an
    existing ``out_dir``; without it an existing folder is refused.
    """
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
        overwrite=overwrite,
    )


def export_checkpoint(
    path: Path, out_dir: Path | None = None, *, run_dir: Path | None = None, overwrite: bool = False
) -> Path:
    """Export from a saved checkpoint (``python -m training export``).

    Never deletes what it did not create: an existing ``out_dir`` is refused without ``overwrite``,
    and an ``out_dir`` that is (or is above) the run folder or the checkpoint is always refused.
    The run folder defaults to the checkpoint's ``RUN/checkpoints/..``.
    """
    out_dir = Path(out_dir) if out_dir else Path(path).parent.parent / 'export'
    refuse_output_holding(out_dir, path, 'the checkpoint')
    refuse_output_holding(out_dir, run_dir or Path(path).parent.parent, 'the run folder')
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f'{out_dir} exists; pass --overwrite to replace it')
    state = ckpt.load_checkpoint(path)
    cfg = state['config']
    backbone = create_backbone(cfg['model']['arch'], init='random')
    set_training_preprocessing(backbone, cfg['data']['size'])
    model = MultiTaskNet(backbone, {t['name']: len(t['classes']) for t in state['tasks']})
    model.load_state_dict(state['model'])
    return export_run(
        model,
        state['tasks'],
        out_dir,
        cfg,
        state.get('metrics', {}),
        state.get('pool_markdown', ''),
        state['iteration'],
        overwrite=overwrite,
    )
