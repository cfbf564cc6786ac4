"""A run's backbone and heads as a Hugging Face folder, through :func:`mtdp_hub.export.export_folder`."""

from __future__ import annotations

import json
from pathlib import Path

from mtdp_hub._io import refuse_output_holding
from mtdp_hub.errors import OutputExistsError
from mtdp_hub.export import export_folder

from . import checkpoint as ckpt
from .model import MultiTaskNet, create_backbone, imagenet_weights_name, set_training_preprocessing

__all__ = ['export_run', 'export_checkpoint', 'run_description']


def _init_text(model_cfg: dict) -> str:
    """Where the run's backbone started, as the config says (``model.init``)."""
    init = model_cfg.get('init', 'imagenet')
    if init == 'random':
        return 'random initialisation'
    if init == 'imagenet':
        source = model_cfg.get('imagenet_weights') or imagenet_weights_name(model_cfg['arch'])
        return f"timm's ImageNet weights `{source}`"
    return f'the weights in `{Path(str(init)).name}`'


def _pool_text(pool, tasks: list[dict]) -> str:
    names = ', '.join(f'`{t["name"]}` ({len(t["classes"])} classes)' for t in tasks)
    which = (
        'the built-in synthetic demo pool (generated images, not real tissue)'
        if pool == 'demo'
        else f'a pool of {len(tasks)} tasks'
    )
    return f'{which}: {names}'


def run_description(cfg: dict, tasks: list[dict], iteration: int) -> str:
    """One paragraph saying what the exported weights are: the run's pool, tasks, size, length, start."""
    size = cfg['data']['size']
    return (
        f"A `{cfg['model']['arch']}` backbone trained by mtdp-hub's `training/` driver with the multi-task "
        f'recipe of Mormont, Geurts and Maree (IEEE JBHI 2021, arXiv:2005.02561) for {iteration} iterations '
        f'(batch {cfg["data"]["batch_size"]}, {size}x{size} px inputs) on {_pool_text(cfg.get("pool"), tasks)}, '
        f'starting from {_init_text(cfg["model"])}. One linear head per task is in `heads.safetensors`. '
        "The weights' licence is for whoever ran the training to choose, within the terms of the pool's datasets "
        'and of the initial weights.'
    )


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
    """Export the backbone (+ heads) with a card and config.json describing the run (pool, metrics,
    settings): nothing inherited from the architecture's pretrained weights (licence, paper, test
    size) that is not true of these.

    ``overwrite`` (the end-of-run export replaces its own earlier ``RUN/export``) replaces an
    existing ``out_dir``; without it an existing folder is refused.
    """
    lines = ['## Training run', '', '### Task pool', '', pool_markdown or '(not recorded)', '']
    if metrics:
        lines += [
            f'### Validation metrics (last evaluation, iteration {iteration} or before)',
            '',
            '| metric | value |',
            '|---|---|',
        ]
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
        about=run_description(cfg, tasks, iteration),
        trained=True,
        tags=('multi-task',),
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
