"""Export: the run's backbone reloads through timm (local-dir:) with the same features, the heads
file holds the trained heads; `python -m training export` and `scan` from the command line."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import training.loop as loop
from mtdp_hub.export import load_heads
from training.model import MultiTaskNet, create_backbone

from .conftest import run_training_cli


@pytest.mark.slow
def test_export_reloads_through_timm_with_same_features_and_heads(tiny_config, tmp_path):
    cfg = tiny_config('exp', run={'export': True})
    summary = loop.main(cfg)
    export = loop.run_dir_of(cfg) / 'export'
    assert summary['export'] == str(export)
    assert {p.name for p in export.iterdir()} >= {
        'model.safetensors',
        'config.json',
        'README.md',
        'heads.safetensors',
    }
    config = json.loads((export / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 0
    assert (
        config['pretrained_cfg']['input_size'] == [3, 32, 32] and config['pretrained_cfg']['crop_pct'] == 1.0
    )
    card = (export / 'README.md').read_text()
    assert 'alpha' in card and 'beta' in card and 'gamma' in card and 'val/alpha/acc' in card

    # The trained model, rebuilt from the final checkpoint.
    state = torch.load(
        sorted((loop.run_dir_of(cfg) / 'checkpoints').glob('ckpt-*.pt'))[-1], weights_only=False
    )
    net = MultiTaskNet(create_backbone('test_resnet', 'random'), {'alpha': 2, 'beta': 3, 'gamma': 2})
    net.load_state_dict(state['model'])
    net.eval()
    reloaded = timm.create_model(f'local-dir:{export}', pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), net.backbone(x), atol=1e-6)
    heads, classes = load_heads(export / 'heads.safetensors')
    assert classes == {'alpha': ['a', 'b'], 'beta': ['x', 'y', 'z'], 'gamma': ['u', 'v']}
    for name, head in heads.items():
        assert torch.equal(head.weight, net.heads[name].weight) and torch.equal(
            head.bias, net.heads[name].bias
        )

    # On demand, from a checkpoint, through the command line: the same weights.
    r = run_training_cli(['export', '--run', str(loop.run_dir_of(cfg)), '--out', str(tmp_path / 'again')])
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (
        load_file(str(export / 'model.safetensors')),
        load_file(str(tmp_path / 'again' / 'model.safetensors')),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_scan_command_lists_undecodable_images(tiny_pool):
    bad = tiny_pool.parent / 'data' / 'alpha' / 'val' / 'a' / 'bad.jpg'
    bad.write_bytes(b'\xff\xd8\xff\xe0 truncated')
    r = run_training_cli(['scan', '--pool', str(tiny_pool), '--workers', '2'])
    assert r.returncode == 1
    assert 'bad.jpg' in r.stdout and 'alpha [val]' in r.stdout
    assert '61 images checked in 3 tasks, 1 undecodable' in r.stdout


@pytest.mark.slow
def test_cli_reports_config_errors_naming_the_key(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('schedule: {iterationz: 3}\n')
    r = run_training_cli(['--config', str(cfg)])
    assert r.returncode == 2 and 'schedule.iterationz' in r.stderr


def _fake_run(tmp_path):
    """A run folder with a checkpoint and its files: the export refuses before reading the checkpoint."""
    run = tmp_path / 'runs' / 'r1'
    (run / 'checkpoints').mkdir(parents=True)
    (run / 'checkpoints' / 'ckpt-000000010.pt').write_bytes(b'checkpoint')
    (run / 'config.yaml').write_text('model: {}\n')
    (run / 'metrics.csv').write_text('step\n')
    return run


def _export_cli(args, capsys):
    from training.__main__ import main

    rc = main(['export', *args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize('where', ['run', 'above', 'checkpoints', 'checkpoint'])
def test_export_never_writes_over_the_run_or_its_checkpoint(tmp_path, capsys, where):
    run = _fake_run(tmp_path)
    out = {
        'run': run,
        'above': run.parent,
        'checkpoints': run / 'checkpoints',
        'checkpoint': run / 'checkpoints' / 'ckpt-000000010.pt',
    }[where]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*'))
    rc, err = _export_cli(['--run', str(run), '--out', str(out), '--overwrite'], capsys)
    assert rc == 2 and 'refusing' in err and str(out) in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*')) == before


def test_export_refuses_an_existing_out_without_overwrite(tmp_path, capsys):
    run = _fake_run(tmp_path)
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    rc, err = _export_cli(['--run', str(run), '--out', str(out)], capsys)
    assert rc == 2 and str(out) in err and '--overwrite' in err
    assert (out / 'keep.txt').read_text() == 'mine'


def _demo_like_export(tmp_path, arch='resnet18'):
    """What the end of a demo run exports: resnet18 from random weights at 48 px, three tasks."""
    from training.export import export_run
    from training.model import set_training_preprocessing

    tasks = [
        {'name': 'demo_tint', 'classes': ['haematoxylin', 'eosin', 'dab']},
        {'name': 'demo_stripes', 'classes': ['horizontal', 'vertical']},
    ]
    backbone = create_backbone(arch, 'random')
    set_training_preprocessing(backbone, 48)
    net = MultiTaskNet(backbone, {t['name']: len(t['classes']) for t in tasks})
    cfg = {
        'pool': 'demo',
        'model': {'arch': arch, 'init': 'random'},
        'optim': {'lr': 0.01},
        'schedule': {'iterations': 200},
        'data': {'size': 48, 'batch_size': 32},
    }
    pool_md = '| task | classes | train | val |\n|---|---|---|---|\n| demo_tint | 3 | 120 | 48 |'
    metrics = {'val/demo_tint/acc': 0.75}
    return export_run(net, tasks, tmp_path / 'export', cfg, metrics, pool_md, 200)


def test_training_export_config_holds_nothing_inherited_from_timm_weights(tmp_path):
    folder = _demo_like_export(tmp_path)
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    assert cfg['input_size'] == [3, 48, 48] and 'pool_size' not in cfg  # the run's size; 7x7 was 224 px's
    assert not {'license', 'paper_ids', 'paper_name', 'test_input_size', 'origin_url', 'hf_hub_id'} & set(cfg)
    text = (folder / 'config.json').read_text()
    assert 'apache' not in text and '2110.00476' not in text and '288' not in text


def test_training_export_card_describes_the_run(tmp_path):
    folder = _demo_like_export(tmp_path)
    card = (folder / 'README.md').read_text()
    meta = card.split('---')[1]
    assert 'pathology' not in meta and 'histology' not in meta and 'license: other' in meta
    for fact in (
        'synthetic demo pool',
        '`demo_tint` (3 classes)',
        '`demo_stripes` (2 classes)',
        '200 iterations',
        '48x48 px',
        'random initialisation',
        '| demo_tint | 3 | 120 | 48 |',  # the pool's image counts
        'val/demo_tint/acc | 0.7500',
        f"'local-dir:{folder}'",
        'Licence: unknown',
    ):
        assert fact in card, fact
    assert 'on pathology patches' not in card and 'MIT' not in card and 'mit' not in meta
