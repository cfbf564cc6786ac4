"""A short real run on the shared H&E patches (crc-he-5class) as a pool of 3 related tasks:
healthy vs adenocarcinoma, adenoma subtype S/T/V, all five classes. CPU, small images."""

from __future__ import annotations

import csv

import pytest

import training.loop as loop
from training.config import from_dict

from .conftest import tiny_config_dict

pytestmark = pytest.mark.slow


def test_crc_pool_loss_falls_and_every_task_beats_chance(shared_data, tmp_path):
    root = shared_data / 'crc-he-5class'
    if not root.is_dir():
        pytest.skip(f'{root} not found')
    pool = tmp_path / 'crc_pool.yaml'
    pool.write_text(f"""tasks:
  - {{name: crc_h_vs_ac, root: {root}, classes: [H, AC]}}
  - {{name: crc_adenoma, root: {root}, classes: [S, T, V]}}
  - {{name: crc_5class, root: {root}}}
""")
    d = tiny_config_dict(
        pool,
        tmp_path / 'runs',
        data={'size': 48, 'batch_size': 32, 'eval_batch_size': 100, 'num_workers': 1},
        model={'arch': 'resnet18'},
        optim={'lr': 0.02, 'head_lr_mult': 1.0},
        schedule={
            'iterations': 150,
            'warmup_iterations': 10,
            'warmup_lr': 0.02,
            'bn_recalibration_batches': 4,
            'checkpoint_every': 150,
            'keep_checkpoints': 1,
            'log_every': 10,
        },
    )
    d['run']['name'] = 'crc'
    cfg = from_dict(d).validate()
    summary = loop.main(cfg)
    with open(loop.run_dir_of(cfg) / 'metrics.csv') as f:
        losses = [float(r['value']) for r in csv.DictReader(f) if r['name'] == 'train/loss']
    print('losses', [round(v, 3) for v in losses], 'metrics', summary['metrics'])
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:2]) / 2
    m = summary['metrics']
    assert m['val/crc_h_vs_ac/acc'] > 0.5 + 0.15 and m['val/crc_h_vs_ac/auc'] > 0.75
    assert m['val/crc_adenoma/acc'] > 1 / 3 + 0.08
    assert m['val/crc_5class/acc'] > 1 / 5 + 0.1
