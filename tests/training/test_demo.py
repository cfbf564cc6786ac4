"""The README's main command: the built-in demo trains on CPU, exports, reloads the export
through timm and prints per-task accuracy well above chance."""

from __future__ import annotations

import json
import re

import pytest

from training.demo import DEMO_TASKS, make_demo_pool
from training.pool import load_pool

from .conftest import run_training_cli


def test_demo_pool_is_deterministic_with_different_class_counts(tmp_path):
    a, _b = make_demo_pool(tmp_path / 'a'), make_demo_pool(tmp_path / 'b')
    pool = load_pool(a)
    assert pool.names == list(DEMO_TASKS) and sorted(t.num_classes for t in pool.tasks) == [2, 3, 4]
    files_a = sorted(p.relative_to(tmp_path / 'a') for p in (tmp_path / 'a').rglob('*.png'))
    files_b = sorted(p.relative_to(tmp_path / 'b') for p in (tmp_path / 'b').rglob('*.png'))
    assert files_a == files_b and len(files_a) == (40 + 16) * 9
    assert all((tmp_path / 'a' / f).read_bytes() == (tmp_path / 'b' / f).read_bytes() for f in files_a[::25])
    assert set(pool.tasks[0].splits['train'].groups) == {f'g{k}' for k in range(8)}


@pytest.mark.slow
def test_demo_command_trains_exports_and_beats_chance(tmp_path):
    r = run_training_cli(
        [
            '--config',
            'training/configs/demo.yaml',
            '--set',
            f'run.output_dir={tmp_path}',
            '--set',
            'run.progress=false',
        ],
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert '\r' not in r.stdout + r.stderr  # captured output: plain lines, no progress bars
    found = re.findall(
        r'reloaded export, (\w+) \((\d) classes, chance [\d.]+\): val accuracy ([\d.]+)', r.stdout
    )
    assert {name for name, _, _ in found} == set(DEMO_TASKS), r.stdout[-3000:]
    for name, classes, acc in found:
        assert float(acc) >= 1 / int(classes) + 0.3, (name, acc)
    summary = json.loads((tmp_path / 'demo' / 'summary.json').read_text())
    assert (tmp_path / 'demo' / 'export' / 'model.safetensors').is_file()
    assert summary['export_metrics'] == pytest.approx(summary['metrics'], abs=0.02)  # the export is the model
