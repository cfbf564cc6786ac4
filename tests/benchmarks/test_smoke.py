"""The benchmark scripts run: ``--help`` of each, tiny CPU runs, and ``gpu.py --device cpu --smoke``.

Speed itself is measured by the scripts (figures in BENCHMARKS.md), never asserted here.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CRC = ROOT.parent / 'shared' / 'data' / 'crc-he-5class'
SCRIPTS = ['multitask_overhead', 'data_pipeline', 'extraction', 'weight_loading', 'gpu', 'slides']


def _load(name: str):
    return importlib.import_module(f'benchmarks.{name}')


def _run(name: str, argv: list[str]) -> dict:
    import torch

    threads = torch.get_num_threads()  # the scripts may set it (--threads); leave it as found
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            assert _load(name).main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.getvalue())


def _positive(d: dict, keys: list[str]) -> None:
    for k in keys:
        assert isinstance(d[k], (int, float)) and d[k] > 0, (k, d[k])


@pytest.mark.parametrize('name', SCRIPTS)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        _load(name).main(['--help'])
    assert e.value.code == 0
    assert 'usage:' in capsys.readouterr().out


def test_multitask_overhead_tiny():
    d = _run(
        'multitask_overhead',
        [
            '--arch',
            'resnet18',
            '--img-size',
            '32',
            '--batch-size',
            '4',
            '--rounds',
            '2',
            '--steps-per-round',
            '1',
            '--device',
            'cpu',
            '--threads',
            '1',
        ],
    )
    assert d['benchmark'] == 'multitask_overhead' and d['tasks'] == 22 and d['machine']['cpu']
    _positive(
        d, ['multitask_img_per_s', 'single_head_img_per_s', 'ratio', 'ratio_of_medians', 'ratio_of_best']
    )


@pytest.mark.skipif(not CRC.is_dir(), reason=f'shared data {CRC} absent')
def test_data_pipeline_tiny():
    d = _run('data_pipeline', ['--sizes', '112', '--images-per-round', '8', '--rounds', '1'])
    r = d['size_112']
    _positive(
        r,
        [
            'project',
            'torchvision',
            'project_uint8',
            'decode_jpeg_uint8',
            'pil_draft_uint8',
            'project_vs_torchvision',
        ],
    )


@pytest.mark.skipif(not CRC.is_dir(), reason=f'shared data {CRC} absent')
def test_extraction_tiny():
    d = _run(
        'extraction',
        [
            '--model',
            'random:resnet18',
            '--images',
            '4',
            '--batch-size',
            '2',
            '--img-size',
            '32',
            '--rounds',
            '1',
            '--workers',
            '0',
            '--device',
            'cpu',
            '--threads',
            '1',
        ],
    )
    _positive(d, ['extract_img_per_s', 'forward_img_per_s', 'ratio'])
    assert d['images_per_round'] == 4


def test_slides_tiny():
    pytest.importorskip('openslide')
    d = _run(
        'slides',
        [
            '--model',
            'random:resnet18',
            '--side',
            '1024',
            '--slide-mpp',
            '1.0',
            '--mpp',
            '2.0',
            '--tile',
            '64',
            '--img-size',
            '32',
            '--rounds',
            '1',
            '--workers',
            '0',
            '--batch-size',
            '16',
            '--device',
            'cpu',
            '--threads',
            '1',
        ],
    )
    assert d['benchmark'] == 'slides' and d['tiles'] > 0
    _positive(d, ['slide_tiles_per_s', 'jpeg_tiles_per_s', 'ratio'])
    _positive(d['segmentation'], ['median_s'])


@pytest.mark.slow
def test_gpu_script_smoke_on_cpu():
    """As on the GPU machine: ``python -m benchmarks.gpu`` from the repo root (the package is not installed
    there); every section runs tiny, including the driver and the extraction benchmark as subprocesses."""
    env = dict(os.environ)
    env.pop('OUT', None)
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.gpu', '--device', 'cpu', '--smoke'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    sections = {json.loads(x)['section']: json.loads(x) for x in lines if x.startswith('{"section"')}
    summary = json.loads('\n'.join(lines[lines.index('{') :]))
    archs = ('resnet50', 'densenet121')
    expected = {'driver', 'extraction_fp32'} | {f'{k}_{a}' for k in ('overhead', 'train') for a in archs}
    assert set(sections) == {'jpegs'} | expected  # no compiled sections unless --compile
    assert summary['sections'].keys() == expected and summary['smoke'] is True and 'machine' in summary
    assert {'noise', 'smooth'} == summary['jpegs'].keys()
    for key, r in summary['sections'].items():
        assert 'error' not in r and 'skipped' not in r, (key, r)
    for arch in archs:
        r = summary['sections'][f'train_{arch}']
        _positive(r['synthetic'], ['img_per_s'])
        for kind in ('noise', 'smooth'):
            _positive(r[f'e2e_{kind}'], ['img_per_s', 'steps', 'of_synthetic'])
        _positive(
            summary['sections'][f'overhead_{arch}'], ['multitask_img_per_s', 'single_head_img_per_s', 'ratio']
        )
    _positive(summary['sections']['driver'], ['img_per_s', 'paper_schedule_minutes'])
    _positive(summary['sections']['extraction_fp32'], ['extract_img_per_s', 'forward_img_per_s', 'ratio'])
    t = summary['targets']
    assert t['e2e_noise_over_synthetic_resnet50']['met'] in (True, False)
    assert t['paper_schedule_minutes']['value'] == summary['sections']['driver']['paper_schedule_minutes']


def test_overhead_benchmark_times_the_training_step_itself():
    """The multi-task variant is the driver's TrainStep: one benchmark step == one TrainStep on a copy."""
    import timm
    import torch

    from training.model import MultiTaskNet
    from training.recipe import sgd
    from training.step import TrainStep

    mo = _load('multitask_overhead')
    torch.manual_seed(0)
    backbone = timm.create_model('test_resnet', num_classes=0)
    tasks = mo.task_sizes(4)
    batch = mo.synthetic_batch(6, 32, list(tasks.values()), torch.device('cpu'), channels_last=False)
    initial = copy.deepcopy(backbone.state_dict())
    torch.manual_seed(1)  # the same initial heads for both
    reference = MultiTaskNet(copy.deepcopy(backbone), tasks).train()
    torch.manual_seed(1)
    setup = mo.multitask_setup(backbone, tasks, batch)
    assert setup() == 6
    TrainStep(reference, sgd(reference, 1e-3), device=torch.device('cpu'), amp_dtype=None)(*batch)
    for (name, a), b in zip(setup.model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert not torch.equal(setup.model.backbone.state_dict()['conv1.0.weight'], initial['conv1.0.weight'])
